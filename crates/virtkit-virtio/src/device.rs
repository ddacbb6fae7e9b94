//! The [`VirtioDevice`] trait that every device model implements, and the
//! [`Interrupt`] handle a transport gives a device when it is activated.

use std::fmt::Debug;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as the devices see it.
pub type GuestMem = vm_memory::GuestMemoryMmap;

/// Why a device raises its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptReason {
    /// The device placed buffers in the used ring of a queue.
    Queue(u16),
    /// The device configuration space changed.
    Config,
    /// The device hit a driver error and ignores its queues until the
    /// driver resets it: the transport sets `DEVICE_NEEDS_RESET` in the
    /// device status and raises a configuration-change interrupt.
    NeedsReset,
}

/// How a device interrupts the driver. The transport provides it.
pub trait Interrupt: Send + Sync + Debug {
    /// Raise the interrupt for `reason`.
    fn signal(&self, reason: InterruptReason) -> std::io::Result<()>;
}

/// A queue handed to a device on activation: the queue state set up by the
/// driver, and the event that fires when the driver notifies it.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue state (addresses, size, indices) as negotiated.
    pub queue: Queue,
    /// Signalled when the driver writes this queue's index to QueueNotify.
    pub notify: EventFd,
}

/// Errors a device returns when it cannot be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device needs.
    #[error("device needs {expected} queues, driver set up {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// Any host resource failure (eventfd, tap, file...).
    #[error("device activation failed: {0}")]
    Io(#[from] std::io::Error),
    /// A device-specific reason.
    #[error("device activation failed: {0}")]
    Other(String),
}

/// A virtio device model, independent of the transport.
///
/// The transport calls these methods from the vCPU thread that traps the
/// register access; the device does its queue work elsewhere (on the event
/// loop), using the [`ActiveQueue::notify`] events it gets in
/// [`VirtioDevice::activate`].
pub trait VirtioDevice: Send + Debug {
    /// The virtio device id (2 for block, 1 for net, ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (include `VIRTIO_F_VERSION_1`).
    fn device_features(&self) -> u64;
    /// Features the driver accepted, called once when the driver sets
    /// FEATURES_OK; always a subset of [`VirtioDevice::device_features`].
    fn set_acked_features(&mut self, acked: u64);
    /// Read from the device-specific configuration space at `offset`.
    /// Bytes past the end of the space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the device-specific configuration space (ignored by devices
    /// whose config is read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start the device with the queues the driver made ready.
    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stop the device and forget its queues (the driver wrote status 0).
    fn reset(&mut self);
    /// The live state of each queue the device was activated with, in activation order,
    /// for a snapshot; empty when not active. Chains the device took but has not
    /// completed are given back (their state's `next_avail` is before them), so a device
    /// restored from it takes them again.
    fn queue_states(&self) -> Vec<virtio_queue::QueueState>;
}

pub use crate::config::read_config_bytes;

/// The queues of an activation as the array of the `N` queues the device
/// needs, or [`ActivateError::QueueCount`] when the driver made ready
/// another number.
pub fn expect_queues<const N: usize>(
    queues: Vec<ActiveQueue>,
) -> Result<[ActiveQueue; N], ActivateError> {
    let got = queues.len();
    <[ActiveQueue; N]>::try_from(queues).map_err(|_| ActivateError::QueueCount { expected: N, got })
}
