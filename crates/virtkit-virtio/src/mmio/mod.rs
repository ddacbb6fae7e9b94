//! The virtio-mmio version 2 transport.
//!
//! [`MmioTransport`] decodes guest accesses to the 4 KiB register window of
//! one device: the status state machine, feature negotiation, queue setup
//! (validated against guest memory before activation), the configuration
//! generation, and interrupt status/acknowledge. The VMM puts it on its MMIO
//! bus, registers [`MmioTransport::queue_events`] as ioeventfds on
//! `base + 0x50` (with the queue index as data match), and an irqfd for the
//! eventfd given to [`MmioTransport::new`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActiveQueue, GuestMem, Interrupt, InterruptReason, VirtioDevice};
use crate::watchdog::InterruptWatchdog;

mod state;
pub use state::{MmioState, SavedQueue};

/// Size of the register window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds go).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b54_5656; // "VVTK"

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Interrupt status bit: used buffer notification.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: configuration change notification.
pub const INT_CONFIG: u32 = 2;

/// Errors from building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A queue size the device declared is not valid for a split queue.
    #[error("device declares an invalid queue size {0}")]
    QueueSize(u16),
    /// The device declares no queues or too many.
    #[error("device declares {0} queues (1..=64 supported)")]
    QueueCount(usize),
    /// A saved state that does not fit this transport and device.
    #[error("cannot restore the virtio-mmio state: {0}")]
    State(String),
}

/// The interrupt a transport hands to its device: sets the interrupt status
/// bit and signals the irqfd.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    /// Device status bits a device sets from its own thread
    /// (`DEVICE_NEEDS_RESET`); the transport merges them into its status.
    device_status: AtomicU32,
    irq: EventFd,
}

impl Interrupt for MmioInterrupt {
    fn signal(&self, reason: InterruptReason) -> std::io::Result<()> {
        let bit = match reason {
            InterruptReason::Queue(_) => INT_VRING,
            InterruptReason::Config => INT_CONFIG,
            InterruptReason::NeedsReset => {
                self.device_status
                    .fetch_or(status::DEVICE_NEEDS_RESET, Ordering::SeqCst);
                INT_CONFIG
            }
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

/// One virtio-mmio device window.
#[derive(Debug)]
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMem,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    /// InterruptACK writes against ticks ([`MmioTransport::resend_unacknowledged`]).
    watchdog: InterruptWatchdog,
}

impl MmioTransport {
    /// A transport for `device`, whose interrupt goes to the irqfd `irq`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMem,
        irq: EventFd,
    ) -> Result<Self, MmioError> {
        let sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > 64 {
            return Err(MmioError::QueueCount(sizes.len()));
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for &s in &sizes {
            queues.push(Queue::new(s).map_err(|_| MmioError::QueueSize(s))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt {
                status: Arc::new(AtomicU32::new(0)),
                device_status: AtomicU32::new(0),
                irq,
            }),
            queues,
            queue_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
            watchdog: InterruptWatchdog::new(),
        })
    }

    /// One watchdog tick (the VMM calls it every few hundred milliseconds): sends the
    /// interrupt again when the interrupt status was non-zero at the previous tick too and
    /// the driver has not written InterruptACK since. An edge lost on its way would
    /// otherwise leave a driver waiting for one request's completion forever (the status
    /// bit stays set and only a later completion raises a new edge). A driver that
    /// acknowledges its interrupts never sees it. Returns whether it sent one.
    pub fn resend_unacknowledged(&mut self) -> bool {
        if !self.watchdog.tick(self.interrupt_status() != 0) {
            return false;
        }
        if let Err(e) = self.interrupt.irq.write(1) {
            warn!("virtio-mmio: sending the interrupt again: {e}");
            return false;
        }
        log::log!(
            self.watchdog.log_level(),
            "virtio-mmio: interrupt status {:#x} not acknowledged: sent again ({} so far)",
            self.interrupt_status(),
            self.watchdog.resent()
        );
        true
    }

    /// How many interrupts [`MmioTransport::resend_unacknowledged`] sent again.
    pub fn resent(&self) -> u64 {
        self.watchdog.resent()
    }

    /// The per-queue notification events, to register as ioeventfds on
    /// `base + QUEUE_NOTIFY_OFFSET` with the queue index as data match.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status register (with `DEVICE_NEEDS_RESET` when the
    /// device or the transport gave up on the driver's set-up).
    pub fn status(&self) -> u32 {
        self.status | self.interrupt.device_status.load(Ordering::SeqCst)
    }

    /// The interrupt status register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt.status.load(Ordering::SeqCst)
    }

    /// Whether the device was activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Tell the driver the configuration changed: bump the generation and
    /// raise a config interrupt.
    pub fn notify_config_change(&mut self) -> std::io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal(InterruptReason::Config)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Handle a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            lock(&self.device).read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            warn!(
                "virtio-mmio: bad register read at {offset:#x} len {}",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR,
            0x10 => {
                let f = lock(&self.device).device_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            0x70 => self.status(),
            0xfc => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Handle a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            if self.status & status::DRIVER == 0 {
                warn!("virtio-mmio: config write before DRIVER status ignored");
                return;
            }
            lock(&self.device).write_config(offset - 0x100, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                "virtio-mmio: bad register write at {offset:#x} len {}",
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            warn!("virtio-mmio: unaligned register write at {offset:#x}");
            return;
        }
        let v = u32::from_le_bytes(bytes);
        let queue_setup_allowed =
            self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if self.status & status::FEATURES_OK != 0 {
                    warn!("virtio-mmio: driver features written after FEATURES_OK ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x50 => self.queue_notify(v),
            0x64 => {
                self.watchdog.ack();
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.set_status(v),
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if !queue_setup_allowed {
                    warn!(
                        "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                        self.status
                    );
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    warn!("virtio-mmio: queue register written with an invalid QueueSel");
                    return;
                };
                match offset {
                    0x38 => q.set_size(v.try_into().unwrap_or(0)),
                    0x44 => q.set_ready(v == 1),
                    0x80 => q.set_desc_table_address(Some(v), None),
                    0x84 => q.set_desc_table_address(None, Some(v)),
                    0x90 => q.set_avail_ring_address(Some(v), None),
                    0x94 => q.set_avail_ring_address(None, Some(v)),
                    0xa0 => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            _ => debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn queue_notify(&mut self, index: u32) {
        // Normally KVM consumes these through the ioeventfd; this path runs
        // when no ioeventfd is registered.
        if let Some(evt) = self.queue_evts.get(index as usize) {
            if let Err(e) = evt.write(1) {
                warn!("virtio-mmio: queue notify: {e}");
            }
        }
    }

    fn set_status(&mut self, new: u32) {
        // Only the device sets DEVICE_NEEDS_RESET; a driver echoing it back
        // does not make it part of the handshake.
        let new = new & !status::DEVICE_NEEDS_RESET;
        if new == 0 {
            self.reset();
            return;
        }
        if new & status::FAILED != 0 {
            self.status |= status::FAILED;
            return;
        }
        // The driver may only add bits, one step of the handshake at a time.
        if new & self.status != self.status {
            warn!(
                "virtio-mmio: status {new:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let added = new & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = lock(&self.device).device_features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                warn!(
                    "virtio-mmio: driver features {:#x} not acceptable (offered {offered:#x})",
                    self.driver_features
                );
                // FEATURES_OK stays clear: the driver sees the refusal.
                self.status = new & !status::FEATURES_OK & !status::DRIVER_OK;
                return;
            }
            lock(&self.device).set_acked_features(self.driver_features);
        }
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                warn!("virtio-mmio: DRIVER_OK without FEATURES_OK ignored");
                return;
            }
            self.status = new;
            self.activate();
            return;
        }
        self.status = new;
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                warn!("virtio-mmio: queue {i} is not valid in guest memory");
                self.device_needs_reset();
                return;
            }
            if q.avail_ring() == 0 {
                // virtio-queue takes an avail ring at 0 for a queue never set up.
                warn!("virtio-mmio: queue {i}: an avail ring at address 0 is not supported");
                self.device_needs_reset();
                return;
            }
            q.set_event_idx(event_idx);
            let notify = match self.queue_evts[i].try_clone() {
                Ok(e) => e,
                Err(e) => {
                    warn!("virtio-mmio: cloning queue event: {e}");
                    self.device_needs_reset();
                    return;
                }
            };
            let queue = match Queue::try_from(q.state()) {
                Ok(q) => q,
                Err(e) => {
                    warn!("virtio-mmio: queue {i}: {e}");
                    self.device_needs_reset();
                    return;
                }
            };
            active.push(ActiveQueue { queue, notify });
        }
        let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
        let result = lock(&self.device).activate(self.mem.clone(), interrupt, active);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                warn!("virtio-mmio: device activation failed: {e}");
                self.device_needs_reset();
            }
        }
    }

    fn device_needs_reset(&mut self) {
        if let Err(e) = self.interrupt.signal(InterruptReason::NeedsReset) {
            warn!("virtio-mmio: config interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.interrupt.device_status.store(0, Ordering::SeqCst);
    }
}

fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}
