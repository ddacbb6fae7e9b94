//! [`Net`], the virtio-net device: its state, activation and reset (the
//! [`VirtioDevice`] side, called by the transport from a vCPU thread).

use std::sync::Arc;

use log::{error, warn};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use virtkit_virtio::device::expect_queues;
use virtkit_virtio::{
    ActivateError, ActiveQueue, DeviceConfig, DeviceQueue, GuestMem, Interrupt, VirtioDevice,
};

use super::backend::NetBackend;
use super::event_handler::Registered;
use super::rx::RxBuffers;
use super::{config, NetError, NetStats, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_NET};
use crate::features::bit;
use crate::iovec::GuestIoVecs;
use crate::tap::Tap;
use crate::MacAddr;

/// What the device holds while the driver runs it: guest memory, the
/// queues, and the guest buffers taken from them (which stay valid because
/// they are kept with the memory, and go with it on reset).
#[derive(Debug)]
pub(super) struct Active {
    pub(super) mem: GuestMem,
    pub(super) interrupt: Arc<dyn Interrupt>,
    pub(super) rx: DeviceQueue,
    pub(super) tx: DeviceQueue,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    /// Receive chains taken from the ring and not yet used.
    pub(super) rx_bufs: RxBuffers,
    /// The transmit chain being sent.
    pub(super) tx_iov: GuestIoVecs,
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net<B: NetBackend = Tap> {
    pub(super) backend: B,
    mac: MacAddr,
    pub(super) mtu: Option<u16>,
    pub(super) config: DeviceConfig,
    pub(super) ctl_evt: EventFd,
    pub(super) active: Option<Active>,
    pub(super) registered: Option<Registered>,
    pub(super) rx_stalled: bool,
    pub(super) rx_notify_on: bool,
    /// The receive used index when the device last decided on an interrupt.
    pub(super) rx_signalled: u16,
    /// (head, length) of the chains one received frame used.
    pub(super) rx_used: Vec<(u16, u32)>,
    pub(super) tx_stalled: bool,
    pub(super) backend_failed: bool,
    pub(super) stats: NetStats,
    queue_sizes: [u16; 2],
}

impl<B: NetBackend> Net<B> {
    /// A device with guest MAC `mac` whose frames go to `backend`. With
    /// `mtu`, the device offers `VIRTIO_NET_F_MTU` and reports it.
    pub fn new(backend: B, mac: MacAddr, mtu: Option<u16>) -> Result<Self, NetError> {
        let config = config::device_config(mac, mtu)?;
        Ok(Net {
            backend,
            mac,
            mtu,
            config,
            ctl_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)?,
            active: None,
            registered: None,
            rx_stalled: false,
            rx_notify_on: true,
            rx_signalled: 0,
            rx_used: Vec::with_capacity(64),
            tx_stalled: false,
            backend_failed: false,
            stats: NetStats::default(),
            queue_sizes: [QUEUE_SIZE; 2],
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The backend (the tap).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The device counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.config.acked_features()
    }

    /// Whether the device is activated.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the receive path is waiting for guest buffers.
    pub fn rx_stalled(&self) -> bool {
        self.rx_stalled
    }

    /// Whether the driver acked feature bit number `b`.
    pub(super) fn has(&self, b: u32) -> bool {
        self.config.is_acked(bit(b))
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.config.device_features()
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.config.ack(acked);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // With VERSION_1 the config space is read-only.
        self.config.write(offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [rx, tx] = expect_queues(queues)?;
        self.backend.set_features(self.config.acked_features())?;
        self.rx_stalled = false;
        self.rx_notify_on = true;
        self.rx_signalled = rx.queue.next_used();
        self.tx_stalled = false;
        self.backend_failed = false;
        self.active = Some(Active {
            rx_bufs: RxBuffers::new(mem.clone()),
            tx_iov: GuestIoVecs::new(mem.clone(), 64),
            mem,
            rx: DeviceQueue::new(rx.queue, RX_QUEUE as u16, interrupt.clone()),
            tx: DeviceQueue::new(tx.queue, TX_QUEUE as u16, interrupt.clone()),
            interrupt,
            rx_evt: rx.notify,
            tx_evt: tx.notify,
        });
        self.ctl_evt.write(1)?;
        Ok(())
    }

    fn reset(&mut self) {
        // The guest buffers taken from the rings go with the memory.
        self.active = None;
        self.rx_stalled = false;
        self.tx_stalled = false;
        self.config.reset();
        if let Err(e) = self.backend.set_features(0) {
            warn!("virtio-net: clearing offloads on reset: {e}");
        }
        if let Err(e) = self.ctl_evt.write(1) {
            error!("virtio-net: waking the event loop on reset: {e}");
        }
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        let Some(a) = &self.active else {
            return Vec::new();
        };
        let mut rx = a.rx.queue().state();
        // Receive chains held for the next frame go back to the ring.
        let held = u16::try_from(a.rx_bufs.held()).unwrap_or(u16::MAX);
        rx.next_avail = rx.next_avail.wrapping_sub(held);
        vec![rx, a.tx.queue().state()]
    }
}
