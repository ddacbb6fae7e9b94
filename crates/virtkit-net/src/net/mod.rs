//! The virtio-net device model (virtio 1.2, 5.1): one receive and one
//! transmit queue, frames moved between the guest's buffers and a
//! [`NetBackend`] (normally a [`Tap`](crate::tap::Tap)) with
//! `readv`/`writev` directly on guest memory. The 12-byte
//! `virtio_net_hdr_v1` passes through unchanged, so checksum and
//! segmentation offloads work end to end.
//!
//! The device runs on an event-manager loop
//! ([`MutEventSubscriber`](event_manager::MutEventSubscriber)); the
//! transport calls [`VirtioDevice::activate`](virtkit_virtio::VirtioDevice::activate)
//! from a vCPU thread, which wakes the loop through an internal eventfd so
//! that the loop registers the queue notifications and the backend.
//!
//! Receive back-pressure: when the guest has no receive buffers, the device
//! stops polling the backend (the frames wait in the tap's queue, as in a
//! real NIC's FIFO) and resumes on the next receive-queue notification.
//! Transmit back-pressure: when the backend returns `EAGAIN`, the chain stays
//! in the ring and the device waits for the backend to become writable.
//!
//! The parts: `backend` ([`NetBackend`], where frames go), `config` (the
//! offered features and the config space), `device` ([`Net`], its
//! activation and reset), `rx` and `tx` (the two queues), `event_handler`
//! (the event-loop registrations).

use std::fmt;

use log::{debug, warn};

use crate::iovec::IoVecError;
use crate::tap::{TapError, VNET_HDR_LEN};

mod backend;
mod config;
mod device;
mod event_handler;
mod rx;
mod tx;

#[cfg(test)]
mod tests;

pub use crate::iovec::GuestIoVec;
pub use backend::NetBackend;
pub use device::Net;

/// The virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the device configuration space (mac, status, max pairs, mtu).
pub const CONFIG_LEN: usize = 12;
/// The largest frame (Ethernet header + payload, VLAN tag included) a
/// segmentation-offload packet can have.
pub const MAX_GSO_FRAME: usize = 65550;
/// The largest transmit chain accepted: header plus [`MAX_GSO_FRAME`] plus
/// slack for a VLAN tag.
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + MAX_GSO_FRAME + 4;
/// Default MTU when none is configured.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU accepted (IPv4 minimum).
pub const MIN_MTU: u16 = 68;
/// Frames handled per queue per wake-up before yielding to other events.
const BATCH: usize = 256;

/// Errors from building a [`Net`] device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is outside 68..=65535 minus headers.
    #[error("invalid MTU {0}: must be between {MIN_MTU} and {max}", max = u16::MAX - 18)]
    InvalidMtu(u16),
    /// The control eventfd could not be created.
    #[error("creating the device eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The backend refused a setting.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// Counters of the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (headers included).
    pub rx_bytes: u64,
    /// Frames the backend had that did not fit the guest's buffers.
    pub rx_dropped: u64,
    /// Receive chains refused as malformed.
    pub rx_malformed: u64,
    /// Frames sent by the guest.
    pub tx_frames: u64,
    /// Bytes sent by the guest (headers included).
    pub tx_bytes: u64,
    /// Frames the backend refused (bad offload header, link down...).
    pub tx_dropped: u64,
    /// Transmit chains refused as malformed.
    pub tx_malformed: u64,
    /// Times the receive path stopped for lack of guest buffers.
    pub rx_stalls: u64,
    /// Times the transmit path waited for the backend.
    pub tx_stalls: u64,
}

/// Why a descriptor chain is refused (returned to the guest unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Malformed {
    /// A device-writable buffer in a transmit chain, or the reverse.
    #[error("a buffer has the wrong direction")]
    WrongDirection,
    /// A buffer outside guest memory, or too many segments.
    #[error(transparent)]
    Buffer(#[from] IoVecError),
    /// Shorter than the net header.
    #[error("shorter than the {VNET_HDR_LEN}-byte net header")]
    TooShort,
    /// A transmit chain longer than [`MAX_TX_LEN`].
    #[error("longer than {MAX_TX_LEN} bytes")]
    TooLong,
}

/// Log a guest mistake: the first few as warnings, then at debug level, so
/// that a misbehaving guest cannot flood the host's logs.
fn log_guest_error(count: u64, msg: fmt::Arguments<'_>) {
    const LOUD: u64 = 10;
    if count <= LOUD {
        warn!("virtio-net: {msg}");
        if count == LOUD {
            warn!("virtio-net: further malformed chains are logged at debug level");
        }
    } else {
        debug!("virtio-net: {msg}");
    }
}
