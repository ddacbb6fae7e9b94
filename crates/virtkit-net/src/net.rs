//! The virtio-net device model (virtio 1.2, 5.1): one receive and one
//! transmit queue, frames moved between the guest's buffers and a
//! [`NetBackend`] (normally a [`Tap`]) with `readv`/`writev` directly on
//! guest memory. The 12-byte `virtio_net_hdr_v1` passes through unchanged,
//! so checksum and segmentation offloads work end to end.
//!
//! The device runs on an event-manager loop ([`MutEventSubscriber`]); the
//! transport calls [`VirtioDevice::activate`] from a vCPU thread, which
//! wakes the loop through an internal eventfd so that the loop registers the
//! queue notifications and the backend.
//!
//! Receive back-pressure: when the guest has no receive buffers, the device
//! stops polling the backend (the frames wait in the tap's queue, as in a
//! real NIC's FIFO) and resumes on the next receive-queue notification.
//! Transmit back-pressure: when the backend returns `EAGAIN`, the chain stays
//! in the ring and the device waits for the backend to become writable.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use virtkit_virtio::{
    ActivateError, ActiveQueue, DeviceQueue, GuestMem, Interrupt, InterruptReason, VirtioDevice,
};

use crate::features::*;
use crate::tap::{self, Tap, TapError, VNET_HDR_LEN};
use crate::MacAddr;

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
/// `UIO_MAXIOV`: the most iovecs one readv/writev takes.
const MAX_IOV: usize = 1024;

const EV_CTL: u32 = 0;
const EV_RX_QUEUE: u32 = 1;
const EV_TX_QUEUE: u32 = 2;
const EV_BACKEND: u32 = 3;

/// Errors from building a [`Net`] device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is outside 68..=65535 minus headers.
    #[error("invalid MTU {0}: must be between {MIN_MTU} and {max}", max = u16::MAX - 18)]
    InvalidMtu(u16),
    /// The control eventfd could not be created.
    #[error("creating the device eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The backend refused a setting.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// Where frames go: a file descriptor on which each `readv` returns one
/// frame and each `writev` sends one, both prefixed with the 12-byte
/// `virtio_net_hdr_v1`, in non-blocking mode.
///
/// Implemented by [`Tap`] and by [`UnixDatagram`] (for tests, benchmarks, or
/// a userspace switch at the other end of a socket pair).
pub trait NetBackend: AsRawFd + Send + fmt::Debug {
    /// Read one frame into the buffers `iov` points to.
    fn read_frame(&self, iov: &[libc::iovec]) -> io::Result<usize>;
    /// Write one frame gathered from the buffers `iov` points to.
    fn write_frame(&self, iov: &[libc::iovec]) -> io::Result<usize>;
    /// Apply the guest's acked virtio-net features (receive offloads).
    fn set_features(&self, acked: u64) -> io::Result<()>;
}

impl NetBackend for Tap {
    fn read_frame(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.read_iovec(iov)
    }
    fn write_frame(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.write_iovec(iov)
    }
    fn set_features(&self, acked: u64) -> io::Result<()> {
        self.set_offload_from_features(acked)
            .map_err(io::Error::other)
    }
}

impl NetBackend for UnixDatagram {
    fn read_frame(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        tap::readv(self.as_fd(), iov)
    }
    fn write_frame(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        tap::writev(self.as_fd(), iov)
    }
    fn set_features(&self, _acked: u64) -> io::Result<()> {
        Ok(())
    }
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

/// Host iovecs into guest memory.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs only point into the guest memory mapping held by the
// same device's `Active::mem` (an `Arc`-shared mmap that stays mapped while
// the device holds it); they are plain addresses and carry no thread
// affinity.
unsafe impl Send for IoVecs {}

impl fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoVecs(len {})", self.0.len())
    }
}

/// A receive chain taken from the ring and not yet used.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    capacity: u32,
    n_iov: usize,
    n_desc: usize,
}

/// Receive buffers taken from the ring, in ring order.
#[derive(Debug)]
struct RxBuffers {
    chains: std::collections::VecDeque<RxChain>,
    iov: IoVecs,
    desc: Vec<(GuestAddress, u32)>,
    capacity: u64,
}

impl RxBuffers {
    fn new() -> Self {
        RxBuffers {
            chains: Default::default(),
            iov: IoVecs(Vec::with_capacity(MAX_IOV)),
            desc: Vec::with_capacity(MAX_IOV),
            capacity: 0,
        }
    }

    fn clear(&mut self) {
        self.chains.clear();
        self.iov.0.clear();
        self.desc.clear();
        self.capacity = 0;
    }

    /// Whether the buffers held are enough to read a frame: one chain
    /// without MRG_RXBUF; with it, room for the largest frame, or as many
    /// buffers as one readv takes, or every descriptor of the ring (a ring
    /// too small for a 64 KiB frame must not stall receive for good; a frame
    /// larger than what it holds is then dropped, as a NIC would).
    fn ready(&self, mrg: bool, needed: u64, ring_size: usize) -> bool {
        if mrg {
            self.capacity >= needed || self.iov.0.len() >= MAX_IOV || self.desc.len() >= ring_size
        } else {
            !self.chains.is_empty()
        }
    }

    /// Remove the first `n` chains.
    fn consume(&mut self, n: usize) {
        let mut iovs = 0;
        let mut descs = 0;
        for c in self.chains.drain(..n) {
            iovs += c.n_iov;
            descs += c.n_desc;
            self.capacity -= u64::from(c.capacity);
        }
        self.iov.0.drain(..iovs);
        self.desc.drain(..descs);
    }
}

#[derive(Debug)]
struct Active {
    mem: GuestMem,
    interrupt: Arc<dyn Interrupt>,
    rx: DeviceQueue,
    tx: DeviceQueue,
    rx_evt: EventFd,
    tx_evt: EventFd,
}

/// The fds this device has in the event loop.
#[derive(Debug)]
struct Registered {
    rx_evt: EventFd,
    tx_evt: EventFd,
    backend: EventSet,
}

/// Why a chain is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    WrongDirection,
    OutOfMemory,
    TooShort,
    TooLong,
    TooManySegments,
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net<B: NetBackend = Tap> {
    backend: B,
    mac: MacAddr,
    mtu: Option<u16>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    ctl_evt: EventFd,
    active: Option<Active>,
    registered: Option<Registered>,
    rx_bufs: RxBuffers,
    tx_iov: IoVecs,
    rx_stalled: bool,
    rx_notify_on: bool,
    /// The receive used index when the device last decided on an interrupt.
    rx_signalled: u16,
    /// (head, length) of the chains one received frame used.
    rx_used: Vec<(u16, u32)>,
    tx_stalled: bool,
    backend_failed: bool,
    stats: NetStats,
    queue_sizes: [u16; 2],
}

impl<B: NetBackend> Net<B> {
    /// A device with guest MAC `mac` whose frames go to `backend`. With
    /// `mtu`, the device offers `VIRTIO_NET_F_MTU` and reports it.
    pub fn new(backend: B, mac: MacAddr, mtu: Option<u16>) -> Result<Self, NetError> {
        if let Some(m) = mtu {
            if !(MIN_MTU..=u16::MAX - 18).contains(&m) {
                return Err(NetError::InvalidMtu(m));
            }
        }
        let mut avail = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_MRG_RXBUF);
        if mtu.is_some() {
            avail |= bit(VIRTIO_NET_F_MTU);
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac.bytes());
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.unwrap_or(DEFAULT_MTU).to_le_bytes());
        Ok(Net {
            backend,
            mac,
            mtu,
            avail_features: avail,
            acked_features: 0,
            config,
            ctl_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)?,
            active: None,
            registered: None,
            rx_bufs: RxBuffers::new(),
            tx_iov: IoVecs(Vec::with_capacity(64)),
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
        self.acked_features
    }

    /// Whether the device is activated.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the receive path is waiting for guest buffers.
    pub fn rx_stalled(&self) -> bool {
        self.rx_stalled
    }

    fn has(&self, b: u32) -> bool {
        self.acked_features & bit(b) != 0
    }

    /// The buffer space one received frame may need.
    fn rx_needed(&self) -> u64 {
        let gso = self.has(VIRTIO_NET_F_GUEST_TSO4)
            || self.has(VIRTIO_NET_F_GUEST_TSO6)
            || self.has(VIRTIO_NET_F_GUEST_UFO);
        if gso {
            (VNET_HDR_LEN + MAX_GSO_FRAME) as u64
        } else {
            (VNET_HDR_LEN + 18 + usize::from(self.mtu.unwrap_or(DEFAULT_MTU))) as u64
        }
    }

    /// Move frames from the guest's transmit queue to the backend now.
    /// Returns the number of frames sent. The event loop calls this on
    /// queue notifications; VMMs with their own loop may call it directly.
    pub fn process_tx(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut sent = 0;
        let mut used_any = false;
        'outer: loop {
            a.tx.disable_notification(&a.mem);
            while let Some(chain) = a.tx.pop(&a.mem) {
                let head = chain.head_index();
                self.tx_iov.0.clear();
                let mut result = Ok(0usize);
                for d in chain {
                    result = result.and_then(|total| {
                        if d.is_write_only() {
                            return Err(Malformed::WrongDirection);
                        }
                        let total = total + d.len() as usize;
                        if total > MAX_TX_LEN {
                            return Err(Malformed::TooLong);
                        }
                        push_iovecs(&a.mem, d.addr(), d.len(), &mut self.tx_iov.0)?;
                        Ok(total)
                    });
                    if result.is_err() {
                        break;
                    }
                }
                let total = result.and_then(|t| {
                    if t < VNET_HDR_LEN {
                        Err(Malformed::TooShort)
                    } else {
                        Ok(t)
                    }
                });
                match total {
                    Err(why) => {
                        self.stats.tx_malformed += 1;
                        log_guest_error(
                            self.stats.tx_malformed,
                            format_args!("dropping malformed tx chain {head}: {why:?}"),
                        );
                    }
                    Ok(total) => match self.backend.write_frame(&self.tx_iov.0) {
                        Ok(_) => {
                            self.stats.tx_frames += 1;
                            self.stats.tx_bytes += total as u64;
                            sent += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Leave the chain in the ring and wait for the
                            // backend to drain.
                            a.tx.undo_pop();
                            self.tx_stalled = true;
                            self.stats.tx_stalls += 1;
                            break 'outer;
                        }
                        Err(e) => {
                            self.stats.tx_dropped += 1;
                            debug!("virtio-net: backend refused a frame: {e}");
                        }
                    },
                }
                if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
                    error!("virtio-net: tx add_used: {e}");
                    break 'outer;
                }
                used_any = true;
                if sent >= BATCH {
                    // Let other events run; the notification fd was not
                    // consumed for these chains, so come back soon.
                    break 'outer;
                }
            }
            // Chains published between the last pop and re-enabling
            // notifications come without a kick: take them now. `rearm`
            // says so only for valid pending chains, so this cannot spin on
            // a bogus avail index (the queue then faults and waits for a
            // reset).
            if !a.tx.rearm(&a.mem) {
                break;
            }
        }
        if sent >= BATCH {
            // More may be waiting: re-arm ourselves through the queue event.
            let _ = a.tx_evt.write(1);
        }
        if used_any {
            signal_used(a, TX_QUEUE);
        }
        sent
    }

    /// Take receive chains from the ring until one frame surely fits.
    /// Returns whether any chain was returned to the guest as malformed.
    fn fill_rx(&mut self) -> bool {
        let needed = self.rx_needed();
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let bufs = &mut self.rx_bufs;
        let mut used_any = false;
        let ring = usize::from(a.rx.size());
        while !bufs.ready(mrg, needed, ring) {
            let Some(chain) = a.rx.pop(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let iov_start = bufs.iov.0.len();
            let desc_start = bufs.desc.len();
            let mut result: Result<u64, Malformed> = Ok(0);
            for d in chain {
                result = result.and_then(|cap| {
                    if !d.is_write_only() {
                        return Err(Malformed::WrongDirection);
                    }
                    if bufs.iov.0.len() >= MAX_IOV {
                        return Err(Malformed::TooManySegments);
                    }
                    push_iovecs(&a.mem, d.addr(), d.len(), &mut bufs.iov.0)?;
                    bufs.desc.push((d.addr(), d.len()));
                    Ok(cap + u64::from(d.len()))
                });
                if result.is_err() {
                    break;
                }
            }
            let result = result.and_then(|cap| {
                if cap < VNET_HDR_LEN as u64 {
                    Err(Malformed::TooShort)
                } else {
                    Ok(u32::try_from(cap).unwrap_or(u32::MAX))
                }
            });
            match result {
                Ok(capacity) => {
                    bufs.chains.push_back(RxChain {
                        head,
                        capacity,
                        n_iov: bufs.iov.0.len() - iov_start,
                        n_desc: bufs.desc.len() - desc_start,
                    });
                    bufs.capacity += u64::from(capacity);
                }
                Err(why) => {
                    bufs.iov.0.truncate(iov_start);
                    bufs.desc.truncate(desc_start);
                    self.stats.rx_malformed += 1;
                    log_guest_error(
                        self.stats.rx_malformed,
                        format_args!("dropping malformed rx chain {head}: {why:?}"),
                    );
                    if let Err(e) = a.rx.add_used(&a.mem, head, 0) {
                        error!("virtio-net: rx add_used: {e}");
                    }
                    used_any = true;
                }
            }
        }
        used_any
    }

    /// Move frames from the backend into the guest's receive buffers now.
    /// Returns the number of frames delivered.
    pub fn process_rx(&mut self) -> usize {
        if self.active.is_none() || self.backend_failed {
            return 0;
        }
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let mut delivered = 0;
        let mut used_any = false;
        loop {
            used_any |= self.fill_rx();
            let needed = self.rx_needed();
            let Some(a) = self.active.as_mut() else {
                return delivered;
            };
            let ready = self.rx_bufs.ready(mrg, needed, usize::from(a.rx.size()));
            if !ready {
                // Out of buffers: ask for a kick and take the buffers
                // published meanwhile (later ones come with a kick), else
                // stall. `rearm` is true only for valid pending chains, of
                // which `fill_rx` then takes at least one or faults the
                // queue, so this cannot spin.
                self.rx_notify_on = true;
                if a.rx.rearm(&a.mem) {
                    continue;
                }
                if !self.rx_stalled {
                    self.stats.rx_stalls += 1;
                }
                self.rx_stalled = true;
                break;
            }
            self.rx_stalled = false;
            if self.rx_notify_on {
                a.rx.disable_notification(&a.mem);
                self.rx_notify_on = false;
            }
            if delivered >= BATCH {
                break;
            }
            let iov = if mrg {
                &self.rx_bufs.iov.0[..]
            } else {
                let n = self.rx_bufs.chains.front().map_or(0, |c| c.n_iov);
                &self.rx_bufs.iov.0[..n]
            };
            let n = match self.backend.read_frame(iov) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    // The tap drops a frame larger than the buffers given,
                    // as a NIC drops an oversized frame.
                    self.stats.rx_dropped += 1;
                    continue;
                }
                Err(e) => {
                    error!("virtio-net: reading the backend failed, receive stopped: {e}");
                    self.backend_failed = true;
                    break;
                }
            };
            if n < VNET_HDR_LEN {
                if n == 0 {
                    error!("virtio-net: backend closed, receive stopped");
                    self.backend_failed = true;
                    break;
                }
                self.stats.rx_dropped += 1;
                continue;
            }
            // Hand out chains front to back until `n` bytes are covered.
            let mut left = n as u64;
            let mut count = 0usize;
            for c in &self.rx_bufs.chains {
                let take = left.min(u64::from(c.capacity));
                left -= take;
                count += 1;
                if left == 0 {
                    break;
                }
            }
            let first_descs = self.rx_bufs.chains.front().map_or(0, |c| c.n_desc);
            let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
            write_at(
                &a.mem,
                &self.rx_bufs.desc[..first_descs],
                10,
                &num_buffers.to_le_bytes(),
            );
            // Publish the frame's chains with one used-index update: a
            // driver polling the ring meanwhile must never see the head
            // (whose num_buffers counts them all) without the rest.
            let mut left = n as u64;
            self.rx_used.clear();
            for c in self.rx_bufs.chains.iter().take(count) {
                let take = left.min(u64::from(c.capacity));
                left -= take;
                self.rx_used.push((c.head, take as u32));
            }
            if let Err(e) = add_used_frame(a.rx.queue_mut(), &a.mem, &self.rx_used) {
                error!("virtio-net: rx add_used: {e}");
            }
            self.rx_bufs.consume(count);
            used_any = true;
            delivered += 1;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += n as u64;
        }
        if used_any {
            if let Some(a) = self.active.as_mut() {
                signal_rx_used(a, &mut self.rx_signalled);
            }
        }
        delivered
    }

    /// Bring the event-loop registrations in line with the device state.
    fn reconcile(&mut self, ops: &mut EventOps<'_>) {
        if let Some(r) = self.registered.take() {
            for (fd, data) in [(&r.rx_evt, EV_RX_QUEUE), (&r.tx_evt, EV_TX_QUEUE)] {
                if let Err(e) = ops.remove(Events::with_data(fd, data, EventSet::IN)) {
                    warn!("virtio-net: unregistering a queue event: {e}");
                }
            }
            if !r.backend.is_empty() {
                if let Err(e) = ops.remove(Events::with_data(&self.backend, EV_BACKEND, r.backend))
                {
                    warn!("virtio-net: unregistering the backend: {e}");
                }
            }
        }
        let Some(a) = self.active.as_ref() else {
            return;
        };
        let clone = |e: &EventFd| e.try_clone();
        let (rx_evt, tx_evt) = match (clone(&a.rx_evt), clone(&a.tx_evt)) {
            (Ok(r), Ok(t)) => (r, t),
            (Err(e), _) | (_, Err(e)) => {
                error!("virtio-net: cloning queue events: {e}");
                return;
            }
        };
        for (fd, data) in [(&rx_evt, EV_RX_QUEUE), (&tx_evt, EV_TX_QUEUE)] {
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                error!("virtio-net: registering a queue event: {e}");
            }
        }
        self.registered = Some(Registered {
            rx_evt,
            tx_evt,
            backend: EventSet::empty(),
        });
        // The driver may have queued buffers before the loop saw the
        // activation.
        self.process_tx();
        self.process_rx();
        self.update_backend_interest(ops);
    }

    /// Poll the backend for input unless receive is stalled, and for output
    /// while transmit waits for it.
    fn update_backend_interest(&mut self, ops: &mut EventOps<'_>) {
        let Some(r) = self.registered.as_mut() else {
            return;
        };
        let mut want = EventSet::empty();
        let active = self.active.is_some();
        if active && !self.rx_stalled && !self.backend_failed {
            want |= EventSet::IN;
        }
        if active && self.tx_stalled {
            want |= EventSet::OUT;
        }
        if want == r.backend {
            return;
        }
        let ev = Events::with_data(&self.backend, EV_BACKEND, want);
        let res = if r.backend.is_empty() {
            ops.add(ev)
        } else if want.is_empty() {
            ops.remove(Events::with_data(&self.backend, EV_BACKEND, r.backend))
        } else {
            ops.modify(ev)
        };
        match res {
            Ok(()) => r.backend = want,
            Err(e) => error!("virtio-net: updating backend polling: {e}"),
        }
    }
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

/// Push iovecs covering guest range `addr..addr+len` (split at region
/// boundaries); fails when any byte is outside guest memory.
fn push_iovecs(
    mem: &GuestMem,
    addr: GuestAddress,
    len: u32,
    out: &mut Vec<libc::iovec>,
) -> Result<(), Malformed> {
    for s in mem.get_slices(addr, len as usize) {
        let s = s.map_err(|_| Malformed::OutOfMemory)?;
        if out.len() >= MAX_IOV {
            return Err(Malformed::TooManySegments);
        }
        out.push(libc::iovec {
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        });
    }
    Ok(())
}

/// Write `data` at byte `offset` of the buffer made of `descs`.
fn write_at(mem: &GuestMem, descs: &[(GuestAddress, u32)], mut offset: u64, data: &[u8]) {
    let mut data = data;
    for &(addr, len) in descs {
        if data.is_empty() {
            return;
        }
        let len = u64::from(len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(data.len() as u64) as usize;
        if let Some(a) = addr.0.checked_add(offset) {
            if let Err(e) = mem.write_slice(&data[..n], GuestAddress(a)) {
                warn!("virtio-net: writing the net header: {e}");
            }
        }
        data = &data[n..];
        offset = 0;
    }
}

/// Put `used` (head, length) pairs on `q`'s used ring in order and publish
/// them with a single used-index store, so that the driver sees all of them
/// or none (a merged receive frame must not appear half-written).
fn add_used_frame(
    q: &mut Queue,
    mem: &GuestMem,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let size = q.size();
    let ring = GuestAddress(q.used_ring());
    let start = q.next_used();
    for (i, &(head, len)) in used.iter().enumerate() {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = u64::from(start.wrapping_add(i as u16) % size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let addr = ring
            .checked_add(4 + slot * 8)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        mem.write_slice(&elem, addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    let next = start.wrapping_add(used.len() as u16);
    let idx = ring
        .checked_add(2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    // Release: the elements are visible before the index that covers them.
    mem.store(next.to_le(), idx, std::sync::atomic::Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    q.set_next_used(next);
    Ok(())
}

/// Interrupt the driver for new receive used entries unless it asked not to
/// be (`used_event` outside the range added since the last decision,
/// virtio 1.2 2.7.10). The receive path publishes with [`add_used_frame`],
/// which the queue's own `needs_notification` bookkeeping does not see, so
/// the range is tracked here from the used index.
fn signal_rx_used(a: &mut Active, signalled: &mut u16) {
    let q = a.rx.queue();
    let used = q.next_used();
    let old = std::mem::replace(signalled, used);
    if used == old {
        return;
    }
    let notify = if q.event_idx_enabled() {
        // `used_event` follows the avail ring's entries.
        let addr = q.avail_ring() + 4 + 2 * u64::from(q.size());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        match a
            .mem
            .load::<u16>(GuestAddress(addr), std::sync::atomic::Ordering::Relaxed)
        {
            Ok(ev) => {
                let ev = u16::from_le(ev);
                used.wrapping_sub(ev).wrapping_sub(1) < used.wrapping_sub(old)
            }
            Err(e) => {
                error!("virtio-net: reading rx used_event: {e}");
                true
            }
        }
    } else {
        true
    };
    if notify {
        if let Err(e) = a.interrupt.signal(InterruptReason::Queue(RX_QUEUE as u16)) {
            error!("virtio-net: interrupt: {e}");
        }
    }
}

fn signal_used(a: &mut Active, index: usize) {
    let q = if index == RX_QUEUE {
        &mut a.rx
    } else {
        &mut a.tx
    };
    if q.needs_notification(&a.mem) {
        if let Err(e) = a.interrupt.signal(InterruptReason::Queue(index as u16)) {
            error!("virtio-net: interrupt: {e}");
        }
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
        self.avail_features
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtkit_virtio::device::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // With VERSION_1 the config space is read-only.
        debug!(
            "virtio-net: guest wrote {} bytes to read-only config at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len(),
            });
        }
        self.backend.set_features(self.acked_features)?;
        let mut it = queues.into_iter();
        let (Some(rx), Some(tx)) = (it.next(), it.next()) else {
            return Err(ActivateError::Other("missing queues".into()));
        };
        self.rx_bufs.clear();
        self.rx_stalled = false;
        self.rx_notify_on = true;
        self.rx_signalled = rx.queue.next_used();
        self.tx_stalled = false;
        self.backend_failed = false;
        self.active = Some(Active {
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
        self.rx_bufs.clear();
        self.active = None;
        self.rx_stalled = false;
        self.tx_stalled = false;
        self.acked_features = 0;
        if let Err(e) = self.backend.set_features(0) {
            warn!("virtio-net: clearing offloads on reset: {e}");
        }
        if let Err(e) = self.ctl_evt.write(1) {
            error!("virtio-net: waking the event loop on reset: {e}");
        }
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        if let Err(e) = ops.add(Events::with_data(&self.ctl_evt, EV_CTL, EventSet::IN)) {
            error!("virtio-net: registering the control event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        match events.data() {
            EV_CTL => {
                let _ = self.ctl_evt.read();
                self.reconcile(ops);
                return;
            }
            EV_RX_QUEUE => {
                if let Some(r) = &self.registered {
                    let _ = r.rx_evt.read();
                }
                self.process_rx();
            }
            EV_TX_QUEUE => {
                if let Some(r) = &self.registered {
                    let _ = r.tx_evt.read();
                }
                self.process_tx();
                // Transmitting may have freed nothing for RX, but a guest
                // that kicks TX often also refilled RX.
                if self.rx_stalled {
                    self.process_rx();
                }
            }
            EV_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) {
                    self.tx_stalled = false;
                    self.process_tx();
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.process_rx();
                }
            }
            other => warn!("virtio-net: unexpected event data {other}"),
        }
        self.update_backend_interest(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DriverQueue;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use vm_memory::GuestMemoryMmap;

    /// Counts queue interrupts per queue, and needs-reset reports.
    #[derive(Debug, Default)]
    struct CountIrq([AtomicUsize; 2], AtomicUsize);
    impl Interrupt for CountIrq {
        fn signal(&self, r: InterruptReason) -> io::Result<()> {
            match r {
                InterruptReason::Queue(i) => {
                    self.0[usize::from(i)].fetch_add(1, Ordering::SeqCst);
                }
                InterruptReason::NeedsReset => {
                    self.1.fetch_add(1, Ordering::SeqCst);
                }
                InterruptReason::Config => {}
            }
            Ok(())
        }
    }

    const RXQ: GuestAddress = GuestAddress(0);
    const TXQ: GuestAddress = GuestAddress(0x1_0000);
    const BUF: u64 = 0x4_0000;
    const MEM_END: u64 = 0x40_0000;

    type Dev = Arc<Mutex<Net<UnixDatagram>>>;

    struct Rig {
        mem: GuestMem,
        net: Dev,
        em: EventManager<Dev>,
        peer: UnixDatagram,
        rxq: DriverQueue,
        txq: DriverQueue,
        irq: Arc<CountIrq>,
        rx_kick: EventFd,
        tx_kick: EventFd,
    }

    fn rig(features: u64, mtu: Option<u16>) -> Rig {
        // Two adjacent regions, so buffers can straddle a boundary.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x20_0000), (MEM_END - 0x20_0000) as usize),
        ])
        .unwrap();
        let (dev, peer) = UnixDatagram::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let net = Arc::new(Mutex::new(Net::new(dev, mac, mtu).unwrap()));
        let mut em = EventManager::<Dev>::new().unwrap();
        em.add_subscriber(net.clone());
        let rxq = DriverQueue::new(&mem, RXQ, 256);
        let txq = DriverQueue::new(&mem, TXQ, 256);
        let irq = Arc::new(CountIrq::default());
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        {
            let mut n = net.lock().unwrap();
            let offered = n.device_features();
            n.set_acked_features(features & offered);
            n.activate(
                mem.clone(),
                irq.clone(),
                vec![
                    ActiveQueue {
                        queue: rxq.queue(),
                        notify: rx_kick.try_clone().unwrap(),
                    },
                    ActiveQueue {
                        queue: txq.queue(),
                        notify: tx_kick.try_clone().unwrap(),
                    },
                ],
            )
            .unwrap();
        }
        let mut r = Rig {
            mem,
            net,
            em,
            peer,
            rxq,
            txq,
            irq,
            rx_kick,
            tx_kick,
        };
        r.run();
        r
    }

    impl Rig {
        /// Dispatch everything pending; returns the number of events.
        fn run(&mut self) -> usize {
            let mut total = 0;
            loop {
                let n = self.em.run_with_timeout(0).unwrap();
                total += n;
                if n == 0 {
                    return total;
                }
            }
        }
        fn stats(&self) -> NetStats {
            self.net.lock().unwrap().stats()
        }
        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn base_features() -> u64 {
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MAC)
    }

    #[test]
    fn config_space_and_features() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let mac: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        let net = Net::new(a, mac, Some(9000)).unwrap();
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let f = net.device_features();
        for b in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_MRG_RXBUF,
        ] {
            assert_ne!(f & bit(b), 0, "feature bit {b}");
        }
        let mut cfg = [0u8; 12];
        net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &mac.bytes());
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 9000);
        let mut past = [0xffu8; 4];
        net.read_config(10, &mut past);
        assert_eq!(past, [0x28, 0x23, 0, 0]);

        let (a, _b) = UnixDatagram::pair().unwrap();
        let net = Net::new(a, mac, None).unwrap();
        assert_eq!(net.device_features() & bit(VIRTIO_NET_F_MTU), 0);
        let (a, _b) = UnixDatagram::pair().unwrap();
        assert!(matches!(
            Net::new(a, mac, Some(10)),
            Err(NetError::InvalidMtu(10))
        ));
    }

    #[test]
    fn works_behind_the_mmio_transport_and_a_dyn_event_loop() {
        use virtkit_virtio::mmio::MmioTransport;
        type DynSub = Arc<Mutex<dyn MutEventSubscriber + Send>>;
        fn send<T: Send>() {}
        send::<Net<Tap>>();

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let (dev, peer) = UnixDatagram::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        let net = Arc::new(Mutex::new(Net::new(dev, MacAddr::default(), None).unwrap()));
        let mut em = EventManager::<DynSub>::new().unwrap();
        em.add_subscriber(net.clone());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(net.clone(), mem.clone(), irq.try_clone().unwrap()).unwrap();
        let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(&mut t, 0x70, 1);
        w(&mut t, 0x70, 3);
        let acked = base_features() | bit(VIRTIO_RING_F_EVENT_IDX);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, acked as u32);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, (acked >> 32) as u32);
        w(&mut t, 0x70, 0xb);
        let rxq = DriverQueue::new(&mem, RXQ, 256);
        let mut txq = DriverQueue::new(&mem, TXQ, 256);
        for (i, q) in [&rxq, &txq].into_iter().enumerate() {
            let qq = q.queue();
            w(&mut t, 0x30, i as u32);
            w(&mut t, 0x38, 256);
            w(&mut t, 0x80, qq.desc_table() as u32);
            w(&mut t, 0x84, 0);
            w(&mut t, 0x90, qq.avail_ring() as u32);
            w(&mut t, 0x94, 0);
            w(&mut t, 0xa0, qq.used_ring() as u32);
            w(&mut t, 0xa4, 0);
            w(&mut t, 0x44, 1);
        }
        w(&mut t, 0x70, 0xf);
        assert!(t.is_activated());
        assert_eq!(net.lock().unwrap().acked_features(), acked);
        while em.run_with_timeout(0).unwrap() > 0 {}

        let f = [vec![0u8; 12], frame(80, 1)].concat();
        mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        txq.add_chain(&[(GuestAddress(BUF), f.len() as u32, false)])
            .unwrap();
        w(&mut t, 0x50, 1); // QueueNotify without an ioeventfd
        while em.run_with_timeout(0).unwrap() > 0 {}
        let mut got = [0u8; 256];
        assert_eq!(peer.recv(&mut got).unwrap(), f.len());
        assert_eq!(txq.take_used().len(), 1);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(t.interrupt_status() & 1, 1);

        // Driver reset: the device stops and forgets its queues.
        w(&mut t, 0x70, 0);
        while em.run_with_timeout(0).unwrap() > 0 {}
        assert!(!net.lock().unwrap().is_active());
    }

    #[test]
    fn activate_needs_two_queues() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (a, _b) = UnixDatagram::pair().unwrap();
        let mut net = Net::new(a, MacAddr::default(), None).unwrap();
        let q = DriverQueue::new(&mem, GuestAddress(0), 16);
        let e = net
            .activate(
                mem.clone(),
                Arc::new(CountIrq::default()),
                vec![ActiveQueue {
                    queue: q.queue(),
                    notify: EventFd::new(0).unwrap(),
                }],
            )
            .unwrap_err();
        assert!(matches!(
            e,
            ActivateError::QueueCount {
                expected: 2,
                got: 1
            }
        ));
    }

    #[test]
    fn tx_frames_reach_the_backend_unchanged() {
        let mut r = rig(base_features(), None);
        let mut hdr = [0u8; 12];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
        hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        let payload = frame(1500, 3);
        // Header in its own descriptor, payload split across the region
        // boundary at 2 MiB.
        let h = BUF;
        let p = 0x20_0000 - 700;
        r.mem.write_slice(&hdr, GuestAddress(h)).unwrap();
        r.mem.write_slice(&payload, GuestAddress(p)).unwrap();
        r.txq
            .add_chain(&[(GuestAddress(h), 12, false), (GuestAddress(p), 1500, false)])
            .unwrap();
        r.tx_kick.write(1).unwrap();
        r.run();
        let mut got = vec![0u8; 4096];
        let n = r.peer.recv(&mut got).unwrap();
        assert_eq!(n, 1512);
        assert_eq!(&got[..12], &hdr);
        assert_eq!(&got[12..n], &payload[..]);
        assert_eq!(r.txq.take_used().len(), 1);
        assert!(r.irq.0[TX_QUEUE].load(Ordering::SeqCst) >= 1);
        let s = r.stats();
        assert_eq!((s.tx_frames, s.tx_bytes), (1, 1512));
    }

    #[test]
    fn indirect_chains_work_both_ways() {
        let mut r = rig(base_features() | bit(VIRTIO_RING_F_INDIRECT_DESC), None);
        let f = [vec![0u8; 12], frame(300, 4)].concat();
        r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        r.txq
            .add_indirect_chain(
                GuestAddress(BUF + 0x10000),
                &[
                    (GuestAddress(BUF), 12, false),
                    (GuestAddress(BUF + 12), 300, false),
                ],
            )
            .unwrap();
        r.tx_kick.write(1).unwrap();
        r.run();
        let mut got = vec![0u8; 1024];
        let n = r.peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);

        r.rxq
            .add_indirect_chain(
                GuestAddress(BUF + 0x20000),
                &[
                    (GuestAddress(BUF + 0x30000), 100, true),
                    (GuestAddress(BUF + 0x40000), 1000, true),
                ],
            )
            .unwrap();
        r.peer.send(&f).unwrap();
        r.rx_kick.write(1).unwrap();
        r.run();
        let used = r.rxq.take_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1 as usize, f.len());
        let mut back = r.read(BUF + 0x30000, 100);
        back.extend(r.read(BUF + 0x40000, f.len() - 100));
        assert_eq!(&back[12..], &f[12..]);
    }

    #[test]
    fn rx_frame_lands_in_one_chain_without_mrg() {
        let mut r = rig(base_features(), None);
        r.rxq
            .add_chain(&[
                (GuestAddress(BUF), 8, true),
                (GuestAddress(BUF + 0x1000), 2000, true),
            ])
            .unwrap();
        r.rx_kick.write(1).unwrap();
        r.run();
        let mut f = vec![0u8; 12];
        f[0] = VIRTIO_NET_HDR_F_DATA_VALID;
        f[10..12].copy_from_slice(&0xffffu16.to_le_bytes()); // device must overwrite
        f.extend(frame(600, 9));
        r.peer.send(&f).unwrap();
        r.run();
        let used = r.rxq.take_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1 as usize, f.len());
        // The header spans the two descriptors.
        let mut got = r.read(BUF, 8);
        got.extend(r.read(BUF + 0x1000, f.len() - 8));
        assert_eq!(&got[..10], &f[..10]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[12..], &f[12..]);
        assert!(r.irq.0[RX_QUEUE].load(Ordering::SeqCst) >= 1);
        assert_eq!(r.stats().rx_frames, 1);
    }

    #[test]
    fn rx_merges_buffers_with_mrg_rxbuf() {
        let mut r = rig(base_features() | bit(VIRTIO_NET_F_MRG_RXBUF), None);
        // 1530 bytes are needed for MTU 1500: give 1024-byte buffers.
        for i in 0..8 {
            r.rxq
                .add_chain(&[(GuestAddress(BUF + i * 0x1000), 1024, true)])
                .unwrap();
        }
        r.rx_kick.write(1).unwrap();
        r.run();
        let mut f = vec![0u8; 12];
        f.extend(frame(1400, 1));
        r.peer.send(&f).unwrap();
        let small = [vec![0u8; 12], frame(50, 2)].concat();
        r.peer.send(&small).unwrap();
        r.run();
        let used = r.rxq.take_used();
        assert_eq!(used.len(), 3, "{used:?}");
        assert_eq!(used[0].1, 1024);
        assert_eq!(used[1].1 as usize, f.len() - 1024);
        assert_eq!(used[2].1 as usize, small.len());
        let first = r.read(BUF, 1024);
        assert_eq!(u16::from_le_bytes([first[10], first[11]]), 2);
        assert_eq!(&first[12..], &f[12..1024]);
        let second_id = used[1].0 as u64;
        let _ = second_id;
        let cont = r.read(BUF + 0x1000, f.len() - 1024);
        assert_eq!(&cont[..], &f[1024..]);
        let third = r.read(BUF + 0x2000, small.len());
        assert_eq!(u16::from_le_bytes([third[10], third[11]]), 1);
        assert_eq!(&third[12..], &small[12..]);
    }

    #[test]
    fn small_ring_with_gso_and_mrg_still_receives() {
        let f = base_features()
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4);
        let mut r = rig(f, None);
        // 256 buffers of 128 bytes: 32 KiB, less than a 64 KiB segment.
        for i in 0..256u64 {
            r.rxq
                .add_chain(&[(GuestAddress(BUF + i * 128), 128, true)])
                .unwrap();
        }
        r.rx_kick.write(1).unwrap();
        r.run();
        let small = [vec![0u8; 12], frame(300, 6)].concat();
        r.peer.send(&small).unwrap();
        r.run();
        let used = r.rxq.take_used();
        assert_eq!(used.len(), 3, "300+12 bytes over 128-byte buffers");
        let total: u32 = used.iter().map(|u| u.1).sum();
        assert_eq!(total as usize, small.len());
        let hdr = r.read(BUF, 12);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
    }

    #[test]
    fn rx_back_pressure_stops_polling_and_loses_nothing() {
        let mut r = rig(base_features(), None);
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|i| [vec![0u8; 12], frame(100 + i, i as u8)].concat())
            .collect();
        for f in &frames {
            r.peer.send(f).unwrap();
        }
        // No buffers: the device must stall and then stay idle although
        // the backend is readable (no busy loop).
        r.run();
        assert!(r.net.lock().unwrap().rx_stalled());
        assert_eq!(r.em.run_with_timeout(50).unwrap(), 0);
        assert_eq!(r.stats().rx_frames, 0);
        assert_eq!(r.stats().rx_dropped, 0);
        // Two buffers now: two frames, then stall again.
        for i in 0..2 {
            r.rxq
                .add_chain(&[(GuestAddress(BUF + i * 0x1000), 2048, true)])
                .unwrap();
        }
        r.rx_kick.write(1).unwrap();
        r.run();
        assert_eq!(r.rxq.take_used().len(), 2);
        assert!(r.net.lock().unwrap().rx_stalled());
        assert_eq!(r.em.run_with_timeout(50).unwrap(), 0);
        for i in 0..3 {
            r.rxq
                .add_chain(&[(GuestAddress(BUF + 0x10000 + i * 0x1000), 2048, true)])
                .unwrap();
        }
        r.rx_kick.write(1).unwrap();
        r.run();
        let used = r.rxq.take_used();
        assert_eq!(used.len(), 3);
        // In order, intact.
        for (k, (_, len)) in used.iter().enumerate() {
            assert_eq!(*len as usize, frames[2 + k].len());
            let got = r.read(BUF + 0x10000 + k as u64 * 0x1000, *len as usize);
            assert_eq!(&got[12..], &frames[2 + k][12..]);
        }
        let s = r.stats();
        assert_eq!((s.rx_frames, s.rx_dropped), (5, 0));
    }

    #[test]
    fn tx_back_pressure_waits_for_the_backend() {
        let mut r = rig(base_features(), None);
        // Fill the peer's receive queue until the device side would block.
        let big = vec![0u8; 60000];
        let mut queued = 0;
        {
            let n = r.net.lock().unwrap();
            while n.backend().send(&big).is_ok() {
                queued += 1;
            }
        }
        assert!(queued > 0);
        let f = [vec![0u8; 12], frame(200, 5)].concat();
        r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        r.txq
            .add_chain(&[(GuestAddress(BUF), f.len() as u32, false)])
            .unwrap();
        r.tx_kick.write(1).unwrap();
        r.run();
        assert!(r.txq.take_used().is_empty(), "chain must wait, not drop");
        assert_eq!(r.stats().tx_stalls, 1);
        // Drain the peer: the device is woken by EPOLLOUT and sends.
        let mut buf = vec![0u8; 65536];
        for _ in 0..queued {
            r.peer.recv(&mut buf).unwrap();
        }
        r.run();
        assert_eq!(r.txq.take_used().len(), 1);
        let n = r.peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
        assert_eq!(r.stats().tx_dropped, 0);
    }

    #[test]
    fn malformed_chains_are_returned_empty() {
        let mut r = rig(base_features(), None);
        let ok = [vec![0u8; 12], frame(64, 0)].concat();
        r.mem.write_slice(&ok, GuestAddress(BUF)).unwrap();
        let cases: Vec<Vec<crate::testing::Buf>> = vec![
            // writable descriptor in a TX chain
            vec![(GuestAddress(BUF), 76, true)],
            // outside guest memory
            vec![(GuestAddress(MEM_END - 10), 76, false)],
            // shorter than the net header
            vec![(GuestAddress(BUF), 11, false)],
            // huge length
            vec![(GuestAddress(BUF), u32::MAX, false)],
            vec![
                (GuestAddress(BUF), 12, false),
                (GuestAddress(BUF), 70_000, false),
            ],
            // a good one after the bad ones still goes out
            vec![(GuestAddress(BUF), 76, false)],
        ];
        for c in &cases {
            r.txq.add_chain(c).unwrap();
        }
        r.tx_kick.write(1).unwrap();
        r.run();
        let used = r.txq.take_used();
        assert_eq!(used.len(), cases.len());
        assert!(used.iter().all(|&(_, len)| len == 0));
        let s = r.stats();
        assert_eq!((s.tx_malformed, s.tx_frames), (5, 1));
        let mut buf = [0u8; 256];
        assert_eq!(r.peer.recv(&mut buf).unwrap(), 76);

        // RX: readable, out of memory, too short; then a good chain.
        r.rxq
            .add_chain(&[(GuestAddress(BUF), 2048, false)])
            .unwrap();
        r.rxq
            .add_chain(&[(GuestAddress(MEM_END - 100), 2048, true)])
            .unwrap();
        r.rxq.add_chain(&[(GuestAddress(BUF), 4, true)]).unwrap();
        r.rxq
            .add_chain(&[(GuestAddress(BUF + 0x8000), 2048, true)])
            .unwrap();
        r.peer.send(&ok).unwrap();
        r.rx_kick.write(1).unwrap();
        r.run();
        let used = r.rxq.take_used();
        assert_eq!(used.len(), 4);
        assert_eq!(used[..3].iter().map(|u| u.1).collect::<Vec<_>>(), [0, 0, 0]);
        assert_eq!(used[3].1 as usize, ok.len());
        assert_eq!(r.stats().rx_malformed, 3);
    }

    #[test]
    fn bogus_avail_index_does_not_hang() {
        for mrg in [false, true] {
            let mut f = base_features();
            if mrg {
                f |= bit(VIRTIO_NET_F_MRG_RXBUF);
            }
            let mut r = rig(f, None);
            r.rxq.set_avail_idx(1000);
            r.txq.set_avail_idx(1000);
            r.peer.send(&[0u8; 64]).unwrap();
            r.tx_kick.write(1).unwrap();
            r.rx_kick.write(1).unwrap();
            r.run();
            assert!(r.txq.take_used().is_empty());
            assert!(r.rxq.take_used().is_empty());
            assert!(r.net.lock().unwrap().rx_stalled());
            // Stalled, not spinning; both queues asked for a reset once.
            assert_eq!(r.em.run_with_timeout(20).unwrap(), 0);
            assert_eq!(r.irq.1.load(Ordering::SeqCst), 2);
            // More kicks do not bring the queues back before a reset.
            r.tx_kick.write(1).unwrap();
            r.rx_kick.write(1).unwrap();
            r.run();
            assert!(r.txq.take_used().is_empty());
            assert_eq!(r.irq.1.load(Ordering::SeqCst), 2);
        }
    }

    #[test]
    fn rx_interrupts_follow_used_event_and_merged_frames_publish_at_once() {
        let f = base_features() | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_NET_F_MRG_RXBUF);
        let mut r = rig(f, None);
        r.net.lock().unwrap().reset();
        r.run();
        // Fresh rings with EVENT_IDX on; the driver asks for an interrupt
        // only once the used index passes 2 (`used_event` = 2).
        let base = GuestAddress(0x2_0000);
        let mut rxq = DriverQueue::new(&r.mem, base, 64);
        let used_event = GuestAddress(base.0 + 0x1000 + 4 + 2 * 64);
        r.mem.write_obj(2u16.to_le(), used_event).unwrap();
        for i in 0..16u64 {
            rxq.add_chain(&[(GuestAddress(BUF + i * 0x1000), 1024, true)])
                .unwrap();
        }
        let txq = DriverQueue::new(&r.mem, GuestAddress(0x3_0000), 64);
        {
            let mut n = r.net.lock().unwrap();
            n.set_acked_features(f);
            let mut rx = rxq.queue();
            rx.set_event_idx(true);
            let mut tx = txq.queue();
            tx.set_event_idx(true);
            n.activate(
                r.mem.clone(),
                r.irq.clone(),
                vec![
                    ActiveQueue {
                        queue: rx,
                        notify: r.rx_kick.try_clone().unwrap(),
                    },
                    ActiveQueue {
                        queue: tx,
                        notify: r.tx_kick.try_clone().unwrap(),
                    },
                ],
            )
            .unwrap();
        }
        r.run();
        let irq = r.irq.clone();
        let irqs = || irq.0[RX_QUEUE].load(Ordering::SeqCst);
        let before = irqs();
        // A 2000-byte frame over 1024-byte buffers: two used entries, which
        // appear together (the used index jumps 0 -> 2).
        let big = [vec![0u8; 12], frame(2000 - 12, 3)].concat();
        r.peer.send(&big).unwrap();
        r.run();
        let used_idx = |r: &Rig| {
            let v: u16 = r.mem.read_obj(rxq_used_idx_addr(base, 64)).unwrap();
            u16::from_le(v)
        };
        assert_eq!(used_idx(&r), 2);
        assert_eq!(irqs(), before, "used_event 2 not passed yet: no interrupt");
        // One more entry: the index passes used_event, so an interrupt.
        r.peer
            .send(&[vec![0u8; 12], frame(100, 4)].concat())
            .unwrap();
        r.run();
        assert_eq!(used_idx(&r), 3);
        assert_eq!(irqs(), before + 1);
        let used = rxq.take_used();
        assert_eq!(
            used.iter().map(|u| u.1).collect::<Vec<_>>(),
            [1024, 976, 112]
        );
        let hdr = r.read(BUF, 12);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
    }

    /// Where the used index of a [`DriverQueue`] of `size` at `base` lies.
    fn rxq_used_idx_addr(base: GuestAddress, size: u64) -> GuestAddress {
        let avail = base.0 + (16 * size).next_multiple_of(4096);
        GuestAddress(avail + 4096 + (2 * size).next_multiple_of(4096) + 2)
    }

    #[test]
    fn reset_unregisters_and_reactivates() {
        let mut r = rig(base_features(), None);
        r.net.lock().unwrap().reset();
        r.run();
        assert!(!r.net.lock().unwrap().is_active());
        // After reset, kicks and backend data are ignored without spinning.
        r.peer.send(&[0u8; 60]).unwrap();
        r.tx_kick.write(1).unwrap();
        assert!(r.run() <= 1);
        assert_eq!(r.em.run_with_timeout(20).unwrap(), 0);
        // Activate again with fresh rings.
        let rxq = DriverQueue::new(&r.mem, GuestAddress(0x2_0000), 64);
        let mut rxq = rxq;
        rxq.add_chain(&[(GuestAddress(BUF), 2048, true)]).unwrap();
        let txq = DriverQueue::new(&r.mem, GuestAddress(0x3_0000), 64);
        {
            let mut n = r.net.lock().unwrap();
            n.set_acked_features(base_features());
            n.activate(
                r.mem.clone(),
                r.irq.clone(),
                vec![
                    ActiveQueue {
                        queue: rxq.queue(),
                        notify: r.rx_kick.try_clone().unwrap(),
                    },
                    ActiveQueue {
                        queue: txq.queue(),
                        notify: r.tx_kick.try_clone().unwrap(),
                    },
                ],
            )
            .unwrap();
        }
        r.run();
        let used = rxq.take_used();
        assert_eq!(used, vec![(used[0].0, 60)]);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            /// Random interleavings of frames arriving, buffers posted and
            /// completions reaped: every frame arrives once, in order.
            #[test]
            fn rx_delivers_every_frame_in_order(
                ops in proptest::collection::vec((0u8..3, 1usize..24), 1..80),
                mrg in any::<bool>(),
            ) {
                let mut f = base_features();
                if mrg {
                    f |= bit(VIRTIO_NET_F_MRG_RXBUF);
                }
                let mut r = rig(f, None);
                let mut sent = 0u32;
                let mut got = Vec::new();
                let reap = |r: &mut Rig, got: &mut Vec<u32>| {
                    for (id, len) in r.rxq.take_used() {
                        let b = r.read(BUF + u64::from(id) * 0x1000, len as usize);
                        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1);
                        got.push(u32::from_le_bytes([b[12], b[13], b[14], b[15]]));
                    }
                };
                let post = |r: &mut Rig, n: usize| {
                    for _ in 0..n {
                        // Descriptor i always gets buffer BUF + i * 4 KiB
                        // (set before the device can look at it).
                        let Some(head) = r.rxq.add_chain(&[(GuestAddress(0), 0, true)]) else {
                            break;
                        };
                        r.rxq.rewrite_single(head, BUF + u64::from(head) * 0x1000, 2048);
                    }
                    r.rx_kick.write(1).unwrap();
                };
                for (op, n) in ops {
                    match op {
                        0 => {
                            for _ in 0..n {
                                let mut fr = vec![0u8; 12];
                                fr.extend_from_slice(&sent.to_le_bytes());
                                fr.resize(60 + (sent as usize * 37) % 1400, 0xee);
                                if r.peer.send(&fr).is_err() {
                                    break;
                                }
                                sent += 1;
                            }
                        }
                        1 => post(&mut r, n),
                        _ => reap(&mut r, &mut got),
                    }
                    r.run();
                }
                while got.len() < sent as usize {
                    post(&mut r, 64);
                    r.run();
                    reap(&mut r, &mut got);
                }
                prop_assert_eq!(got, (0..sent).collect::<Vec<_>>());
                prop_assert_eq!(r.stats().rx_dropped, 0);
            }
        }

        fn desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
            (
                prop_oneof![
                    Just(BUF),
                    0..MEM_END + 0x1000,
                    Just(MEM_END - 8),
                    Just(u64::MAX - 4),
                ],
                prop_oneof![0u32..4096, Just(u32::MAX), Just(12u32)],
                0u16..8,
                0u16..20,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]
            #[test]
            fn random_descriptor_tables_never_panic(
                tx in proptest::collection::vec(desc(), 1..16),
                rx in proptest::collection::vec(desc(), 1..16),
                heads in proptest::collection::vec(0u16..20, 1..6),
                mrg in any::<bool>(),
            ) {
                let mut f = base_features();
                if mrg {
                    f |= bit(VIRTIO_NET_F_MRG_RXBUF);
                }
                let mut r = rig(f, None);
                for &h in &heads {
                    r.txq.add_raw(&tx, h);
                    r.rxq.add_raw(&rx, h);
                }
                r.peer.send(&[0u8; 100]).unwrap();
                r.tx_kick.write(1).unwrap();
                r.rx_kick.write(1).unwrap();
                r.run();
                // Every TX head was consumed, with length 0.
                let used = r.txq.take_used();
                prop_assert!(used.len() <= heads.len());
                prop_assert!(used.iter().all(|&(_, l)| l == 0));
                for (_, len) in r.rxq.take_used() {
                    prop_assert!(len as usize <= 100);
                }
            }
        }
    }
}
