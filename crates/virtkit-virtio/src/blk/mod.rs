//! virtio-blk over any [`BlockBackend`].
//!
//! Every descriptor chain is validated before any data moves: the header
//! must be 16 device-readable bytes, readable descriptors must come before
//! writable ones, the status byte is the last byte of the last (writable)
//! descriptor, data lengths are multiples of 512 and inside the disk, and
//! every buffer lies inside guest memory. A malformed chain completes with
//! `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for unknown request types) when its
//! status byte can be written, and with a used length of 0 otherwise.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::DeviceConfig;
use crate::device::{
    expect_queues, ActivateError, ActiveQueue, GuestMem, Interrupt, InterruptReason, VirtioDevice,
};
use crate::mmio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::queue::DeviceQueue;
use virtkit_block::{BlockBackend, BlockError};

mod chain;
use chain::Desc;

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Sector size used by the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Feature bits (virtio 1.2, 5.2.3).
pub mod features {
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// Block size of the disk is in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command support.
    pub const FLUSH: u64 = 1 << 9;
    /// DISCARD command support.
    pub const DISCARD: u64 = 1 << 13;
    /// WRITE_ZEROES command support.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types.
pub mod request {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Get the device id string.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also used for malformed requests).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

const QUEUE_SIZE: u16 = 256;
/// Segments per request we advertise (`seg_max`).
const SEG_MAX: u32 = (QUEUE_SIZE - 2) as u32;
const ID_LEN: usize = 20;
const MAX_DISCARD_SECTORS: u32 = 1 << 22;
const MAX_DISCARD_SEG: u32 = 32;
const CHUNK: usize = 1 << 20;
/// Requests one [`Block::process_queue`] call completes at most.
pub const REQUEST_BUDGET: usize = 256;

/// Errors building a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The serial is longer than 20 bytes.
    #[error("serial {0:?} is longer than 20 bytes")]
    Serial(String),
}

/// Options for a virtio-blk device.
#[derive(Debug, Clone, Default)]
pub struct BlockOptions {
    /// Refuse writes and advertise `VIRTIO_BLK_F_RO` (also set when the
    /// backend is read-only).
    pub read_only: bool,
    /// The id string returned by GET_ID (at most 20 bytes).
    pub serial: String,
}

#[derive(Debug)]
struct Active {
    mem: GuestMem,
    interrupt: Arc<dyn Interrupt>,
    queue: DeviceQueue,
    notify: EventFd,
}

/// What one [`Block::process_queue`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Requests completed (returned to the used ring).
    pub completed: usize,
    /// The driver must be notified of used buffers.
    pub notify: bool,
    /// The request budget ran out with chains still pending: call again
    /// (the event loop re-arms the queue event for that).
    pub more: bool,
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    read_only: bool,
    config: DeviceConfig,
    id: [u8; ID_LEN],
    queue_sizes: [u16; 1],
    activate_evt: EventFd,
    pending: Option<Active>,
    active: Option<Active>,
    /// Queue events of a reset device, removed from the event loop on the
    /// next activate event.
    retired: Vec<EventFd>,
    buf: Vec<u8>,
}

impl Block {
    /// A virtio-blk device over `backend`.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        opts: BlockOptions,
    ) -> Result<Self, BlockDeviceError> {
        if opts.serial.len() > ID_LEN {
            return Err(BlockDeviceError::Serial(opts.serial));
        }
        let mut id = [0u8; ID_LEN];
        id[..opts.serial.len()].copy_from_slice(opts.serial.as_bytes());
        let read_only = opts.read_only || backend.is_read_only();
        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH;
        if read_only {
            avail_features |= features::RO;
        } else {
            avail_features |= features::DISCARD | features::WRITE_ZEROES;
        }
        let capacity = backend.size() / SECTOR_SIZE;
        let mut config = vec![0u8; 60];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        config[44..48].copy_from_slice(&1u32.to_le_bytes());
        config[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        config[56] = 1; // write_zeroes_may_unmap
        Ok(Block {
            backend,
            read_only,
            config: DeviceConfig::new("virtio-blk", avail_features, config),
            id,
            queue_sizes: [QUEUE_SIZE],
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockDeviceError::EventFd)?,
            pending: None,
            active: None,
            retired: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Whether the device refuses writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.config.acked_features()
    }

    /// Process the available requests of `queue`, at most [`REQUEST_BUDGET`]
    /// of them, so one busy or hostile queue cannot keep the event loop from
    /// other devices. Exposed for tests, benchmarks and fuzzing; the event
    /// loop calls it on queue notifications. A driver error in the ring
    /// itself (a bogus avail index) stops the queue until the driver resets
    /// the device: see [`DeviceQueue`].
    pub fn process_queue(&mut self, mem: &GuestMem, queue: &mut DeviceQueue) -> QueueRun {
        let mut run = QueueRun::default();
        loop {
            queue.disable_notification(mem);
            while run.completed < REQUEST_BUDGET {
                let Some(chain) = queue.pop(mem) else {
                    break;
                };
                let head = chain.head_index();
                let descs: Vec<Desc> = chain
                    .map(|d| Desc {
                        addr: d.addr(),
                        len: d.len(),
                        write: d.is_write_only(),
                    })
                    .collect();
                let used = self.handle_request(mem, &descs);
                if let Err(e) = queue.add_used(mem, head, used) {
                    error!("virtio-blk: add_used: {e}");
                }
                run.completed += 1;
            }
            // Notifications are on again whichever way this ends, so a queue
            // left with nothing pending is never left without kicks.
            if !queue.rearm(mem) {
                break;
            }
            if run.completed >= REQUEST_BUDGET {
                run.more = true;
                break;
            }
        }
        run.notify = run.completed > 0 && queue.needs_notification(mem);
        run
    }

    /// Handle one request given as its descriptors; returns the used length.
    fn handle_queue_event(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        if let Err(e) = active.notify.read() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                warn!("virtio-blk: reading queue event: {e}");
            }
        }
        let mem = active.mem.clone();
        let run = self.process_queue(&mem, &mut active.queue);
        if run.notify {
            if let Err(e) = active.interrupt.signal(InterruptReason::Queue(0)) {
                error!("virtio-blk: signalling the guest: {e}");
            }
        }
        if run.more {
            // Come back after the other ready events: the queue event is
            // level-triggered through its counter.
            if let Err(e) = active.notify.write(1) {
                error!("virtio-blk: re-arming the queue event: {e}");
            }
        }
        self.active = Some(active);
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
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
        self.config.write(offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [q] = expect_queues(queues)?;
        self.pending = Some(Active {
            mem,
            queue: DeviceQueue::new(q.queue, 0, interrupt.clone()),
            interrupt,
            notify: q.notify,
        });
        self.activate_evt.write(1)?;
        Ok(())
    }
    fn reset(&mut self) {
        self.pending = None;
        if let Some(a) = self.active.take() {
            self.retired.push(a.notify);
            // Wake the event loop so it stops watching the old queue event.
            if let Err(e) = self.activate_evt.write(1) {
                error!("virtio-blk: waking the event loop on reset: {e}");
            }
        }
        self.config.reset();
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        // Requests complete within one event, so no chain is ever held between events.
        self.active
            .as_ref()
            .or(self.pending.as_ref())
            .map(|a| vec![a.queue.queue().state()])
            .unwrap_or_default()
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            error!("virtio-blk: registering the activate event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            for old in self.retired.drain(..) {
                let _ = ops.remove(Events::new(&old, EventSet::IN));
            }
            if let Some(old) = self.active.take() {
                let _ = ops.remove(Events::new(&old.notify, EventSet::IN));
            }
            if let Some(p) = self.pending.take() {
                if let Err(e) = ops.add(Events::new(&p.notify, EventSet::IN)) {
                    error!("virtio-blk: registering the queue event: {e}");
                }
                self.active = Some(p);
                // Requests may already be waiting.
                self.handle_queue_event();
            }
            return;
        }
        match &self.active {
            Some(a) if a.notify.as_raw_fd() == fd => self.handle_queue_event(),
            _ => debug!("virtio-blk: event on unknown fd {fd}"),
        }
    }
}
