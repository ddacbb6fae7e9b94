//! The receive queue: guest buffers taken from the ring ([`RxBuffers`]),
//! frames read from the backend straight into them, merged-buffer frames
//! (`VIRTIO_NET_F_MRG_RXBUF`) published with one used-index update, and the
//! receive interrupt decision.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{fence, Ordering};

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use virtkit_virtio::{GuestMem, InterruptReason};

use super::backend::NetBackend;
use super::device::{Active, Net};
use super::{config, log_guest_error, Malformed, BATCH, RX_QUEUE};
use crate::features::*;
use crate::iovec::{GuestIoVecs, IoVecError, MAX_IOV};
use crate::tap::VNET_HDR_LEN;

/// Offset of `num_buffers` in the net header.
const NUM_BUFFERS_OFFSET: u64 = 10;

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
pub(super) struct RxBuffers {
    chains: VecDeque<RxChain>,
    iov: GuestIoVecs,
    desc: Vec<(GuestAddress, u32)>,
    capacity: u64,
}

impl RxBuffers {
    /// Chains taken from the ring and not yet used.
    pub(super) fn held(&self) -> usize {
        self.chains.len()
    }

    /// No buffers yet, for chains in `mem`.
    pub(super) fn new(mem: GuestMem) -> Self {
        RxBuffers {
            chains: VecDeque::new(),
            iov: GuestIoVecs::new(mem, MAX_IOV),
            desc: Vec::with_capacity(MAX_IOV),
            capacity: 0,
        }
    }

    /// Whether the buffers held are enough to read a frame: one chain
    /// without MRG_RXBUF; with it, room for the largest frame, or as many
    /// buffers as one readv takes, or every descriptor of the ring (a ring
    /// too small for a 64 KiB frame must not stall receive for good; a frame
    /// larger than what it holds is then dropped, as a NIC would).
    fn ready(&self, mrg: bool, needed: u64, ring_size: usize) -> bool {
        if mrg {
            self.capacity >= needed || self.iov.len() >= MAX_IOV || self.desc.len() >= ring_size
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
        self.iov.remove_front(iovs);
        self.desc.drain(..descs);
    }

    /// Append one chain's buffer `addr..addr+len`; returns its length.
    fn push(&mut self, addr: GuestAddress, len: u32) -> Result<u64, Malformed> {
        if self.iov.len() >= MAX_IOV {
            return Err(IoVecError::TooManySegments.into());
        }
        self.iov.push(addr, len)?;
        self.desc.push((addr, len));
        Ok(u64::from(len))
    }
}

impl<B: NetBackend> Net<B> {
    /// The buffer space one received frame may need.
    fn rx_needed(&self) -> u64 {
        config::rx_frame_room(&self.config, self.mtu)
    }

    /// Take receive chains from the ring until one frame surely fits.
    /// Returns whether any chain was returned to the guest as malformed.
    fn fill_rx(&mut self) -> bool {
        let needed = self.rx_needed();
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let bufs = &mut a.rx_bufs;
        let mut used_any = false;
        let ring = usize::from(a.rx.size());
        while !bufs.ready(mrg, needed, ring) {
            let Some(chain) = a.rx.pop(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let iov_start = bufs.iov.len();
            let desc_start = bufs.desc.len();
            let mut result: Result<u64, Malformed> = Ok(0);
            for d in chain {
                result = result.and_then(|cap| {
                    if !d.is_write_only() {
                        return Err(Malformed::WrongDirection);
                    }
                    Ok(cap + bufs.push(d.addr(), d.len())?)
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
                        n_iov: bufs.iov.len() - iov_start,
                        n_desc: bufs.desc.len() - desc_start,
                    });
                    bufs.capacity += u64::from(capacity);
                }
                Err(why) => {
                    bufs.iov.truncate(iov_start);
                    bufs.desc.truncate(desc_start);
                    self.stats.rx_malformed += 1;
                    log_guest_error(
                        self.stats.rx_malformed,
                        format_args!("dropping malformed rx chain {head}: {why}"),
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
            let ready = a.rx_bufs.ready(mrg, needed, usize::from(a.rx.size()));
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
            let bufs = &a.rx_bufs;
            let iov = if mrg {
                bufs.iov.as_slice()
            } else {
                let n = bufs.chains.front().map_or(0, |c| c.n_iov);
                &bufs.iov.as_slice()[..n]
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
            for c in &bufs.chains {
                let take = left.min(u64::from(c.capacity));
                left -= take;
                count += 1;
                if left == 0 {
                    break;
                }
            }
            let first_descs = bufs.chains.front().map_or(0, |c| c.n_desc);
            let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
            write_at(
                &a.mem,
                &bufs.desc[..first_descs],
                NUM_BUFFERS_OFFSET,
                &num_buffers.to_le_bytes(),
            );
            // Publish the frame's chains with one used-index update: a
            // driver polling the ring meanwhile must never see the head
            // (whose num_buffers counts them all) without the rest.
            let mut left = n as u64;
            self.rx_used.clear();
            for c in bufs.chains.iter().take(count) {
                let take = left.min(u64::from(c.capacity));
                left -= take;
                self.rx_used.push((c.head, take as u32));
            }
            if let Err(e) = add_used_frame(a.rx.queue_mut(), &a.mem, &self.rx_used) {
                error!("virtio-net: rx add_used: {e}");
            }
            a.rx_bufs.consume(count);
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
    mem.store(next.to_le(), idx, Ordering::Release)
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
        fence(Ordering::SeqCst);
        match a.mem.load::<u16>(GuestAddress(addr), Ordering::Relaxed) {
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
