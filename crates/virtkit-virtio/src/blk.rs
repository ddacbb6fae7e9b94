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
    fn handle_request(&mut self, mem: &GuestMem, descs: &[Desc]) -> u32 {
        // The status byte: last byte of the last descriptor, which must be
        // writable and inside guest memory.
        let Some(last) = descs.last() else {
            return 0;
        };
        if !last.write || last.len == 0 {
            warn!("virtio-blk: chain has no writable status byte");
            return 0;
        }
        let Some(status_addr) = last.addr.0.checked_add(u64::from(last.len) - 1) else {
            return 0;
        };
        let status_addr = GuestAddress(status_addr);
        if !mem.address_in_range(status_addr) {
            warn!("virtio-blk: status byte outside guest memory");
            return 0;
        }
        let (st, written) = match self.parse_and_execute(mem, descs) {
            Ok(n) => (status::OK, n),
            Err(ReqError::Unsupported(t)) => {
                debug!("virtio-blk: unsupported request type {t}");
                (status::UNSUPP, 0)
            }
            Err(e) => {
                warn!("virtio-blk: request failed: {e}");
                (status::IOERR, 0)
            }
        };
        if mem.write_obj(st, status_addr).is_err() {
            return 0;
        }
        written.saturating_add(1)
    }

    fn parse_and_execute(&mut self, mem: &GuestMem, descs: &[Desc]) -> Result<u32, ReqError> {
        // Split into readable then writable descriptors, checking order and
        // that every buffer is inside guest memory.
        let first_write = descs.iter().position(|d| d.write).unwrap_or(descs.len());
        if descs[first_write..].iter().any(|d| !d.write) {
            return Err(ReqError::Layout("readable descriptor after a writable one"));
        }
        for d in descs {
            if !mem.check_range(d.addr, d.len as usize) {
                return Err(ReqError::OutsideMemory(d.addr.0, d.len));
            }
        }
        let mut readable = Segments::new(&descs[..first_write]);
        let mut writable = Segments::new(&descs[first_write..]);
        // The status byte is not data.
        writable.truncate(writable.total - 1);

        let mut hdr = [0u8; 16];
        if readable.total < 16 {
            return Err(ReqError::Layout("request header shorter than 16 bytes"));
        }
        readable.read_into(mem, &mut hdr)?;
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let size = self.backend.size();
        let data_range = |len: u64| -> Result<u64, ReqError> {
            if len % SECTOR_SIZE != 0 {
                return Err(ReqError::Unaligned(len));
            }
            let off = sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(ReqError::OutOfRange(sector))?;
            match off.checked_add(len) {
                Some(end) if end <= size => Ok(off),
                _ => Err(ReqError::OutOfRange(sector)),
            }
        };
        match req_type {
            request::IN => {
                if readable.remaining() != 0 {
                    return Err(ReqError::Layout("IN request with readable data"));
                }
                let len = writable.total;
                let mut off = data_range(len)?;
                // Straight from the backend into guest memory, piece by piece; a
                // piece that spans two memory regions goes through the bounce buffer.
                while let Some((a, n)) = writable.next_piece(CHUNK) {
                    match mem.get_slice(a, n) {
                        Ok(vs) => self.backend.read_volatile_at(&vs, off)?,
                        Err(_) => {
                            self.buf.resize(n, 0);
                            self.backend.read_at(&mut self.buf[..n], off)?;
                            mem.write_slice(&self.buf[..n], a)
                                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
                        }
                    }
                    off += n as u64;
                }
                u32::try_from(len).map_err(|_| ReqError::Layout("request too long"))
            }
            request::OUT => {
                if self.read_only {
                    return Err(ReqError::ReadOnly);
                }
                if writable.total != 0 {
                    return Err(ReqError::Layout("OUT request with writable data"));
                }
                let len = readable.remaining();
                let mut off = data_range(len)?;
                while let Some((a, n)) = readable.next_piece(CHUNK) {
                    match mem.get_slice(a, n) {
                        Ok(vs) => self.backend.write_volatile_at(&vs, off)?,
                        Err(_) => {
                            self.buf.resize(n, 0);
                            mem.read_slice(&mut self.buf[..n], a)
                                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
                            self.backend.write_at(&self.buf[..n], off)?;
                        }
                    }
                    off += n as u64;
                }
                Ok(0)
            }
            request::FLUSH => {
                self.backend.flush()?;
                Ok(0)
            }
            request::GET_ID => {
                let n = (writable.total as usize).min(ID_LEN);
                let id = self.id;
                writable.write_from(mem, &id[..n])?;
                Ok(n as u32)
            }
            request::DISCARD | request::WRITE_ZEROES => {
                let zeroes = req_type == request::WRITE_ZEROES;
                if self.read_only {
                    return Err(ReqError::ReadOnly);
                }
                let feature = if zeroes {
                    features::WRITE_ZEROES
                } else {
                    features::DISCARD
                };
                if !self.config.is_acked(feature) {
                    return Err(ReqError::Unsupported(req_type));
                }
                let len = readable.remaining();
                if len == 0 || len % 16 != 0 || len / 16 > u64::from(MAX_DISCARD_SEG) {
                    return Err(ReqError::Layout("bad discard/write-zeroes segment list"));
                }
                let mut segs = vec![0u8; len as usize];
                readable.read_into(mem, &mut segs)?;
                for s in segs.chunks_exact(16) {
                    let mut b8 = [0u8; 8];
                    b8.copy_from_slice(&s[0..8]);
                    let start = u64::from_le_bytes(b8);
                    let num = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
                    let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
                    // Bit 0 is "unmap", only meaningful for write-zeroes.
                    if (zeroes && flags & !1 != 0) || (!zeroes && flags != 0) {
                        return Err(ReqError::Unsupported(req_type));
                    }
                    if num > MAX_DISCARD_SECTORS {
                        return Err(ReqError::Layout("segment longer than advertised"));
                    }
                    let off = start
                        .checked_mul(SECTOR_SIZE)
                        .ok_or(ReqError::OutOfRange(start))?;
                    let bytes = u64::from(num) * SECTOR_SIZE;
                    match off.checked_add(bytes) {
                        Some(end) if end <= size => {}
                        _ => return Err(ReqError::OutOfRange(start)),
                    }
                    if zeroes {
                        self.backend.write_zeroes(off, bytes)?;
                    } else {
                        self.backend.discard(off, bytes)?;
                    }
                }
                Ok(0)
            }
            t => Err(ReqError::Unsupported(t)),
        }
    }

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

#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    write: bool,
}

/// A cursor over a list of guest buffers.
struct Segments {
    bufs: Vec<(GuestAddress, u64)>,
    idx: usize,
    pos: u64,
    total: u64,
    consumed: u64,
}

impl Segments {
    fn new(descs: &[Desc]) -> Self {
        let bufs: Vec<(GuestAddress, u64)> =
            descs.iter().map(|d| (d.addr, u64::from(d.len))).collect();
        let total = bufs.iter().map(|b| b.1).sum();
        Segments {
            bufs,
            idx: 0,
            pos: 0,
            total,
            consumed: 0,
        }
    }

    fn remaining(&self) -> u64 {
        self.total - self.consumed
    }

    /// Forget everything past `len` bytes.
    fn truncate(&mut self, len: u64) {
        let mut left = len;
        for b in &mut self.bufs {
            b.1 = b.1.min(left);
            left -= b.1;
        }
        self.total = len;
    }

    fn next_piece(&mut self, want: usize) -> Option<(GuestAddress, usize)> {
        while self.idx < self.bufs.len() {
            let (addr, len) = self.bufs[self.idx];
            if self.pos < len {
                let n = (len - self.pos).min(want as u64) as usize;
                let a = GuestAddress(addr.0 + self.pos);
                self.pos += n as u64;
                self.consumed += n as u64;
                return Some((a, n));
            }
            self.idx += 1;
            self.pos = 0;
        }
        None
    }

    fn read_into(&mut self, mem: &GuestMem, out: &mut [u8]) -> Result<(), ReqError> {
        let mut done = 0;
        while done < out.len() {
            let (a, n) = self
                .next_piece(out.len() - done)
                .ok_or(ReqError::Layout("request shorter than its header says"))?;
            mem.read_slice(&mut out[done..done + n], a)
                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
            done += n;
        }
        Ok(())
    }

    fn write_from(&mut self, mem: &GuestMem, data: &[u8]) -> Result<(), ReqError> {
        let mut done = 0;
        while done < data.len() {
            let (a, n) = self
                .next_piece(data.len() - done)
                .ok_or(ReqError::Layout("buffers too short"))?;
            mem.write_slice(&data[done..done + n], a)
                .map_err(|_| ReqError::OutsideMemory(a.0, n as u32))?;
            done += n;
        }
        Ok(())
    }
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum ReqError {
    #[error("malformed request: {0}")]
    Layout(&'static str),
    #[error("buffer {0:#x}+{1} is outside guest memory")]
    OutsideMemory(u64, u32),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sector {0} is outside the disk")]
    OutOfRange(u64),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error(transparent)]
    Backend(#[from] BlockError),
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
