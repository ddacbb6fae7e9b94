//! Test helpers (feature `test-utils`): [`DriverQueue`], the driver side of
//! a split virtqueue in guest memory, to feed a device chains and read back
//! what it used.

use std::collections::HashMap;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use virtkit_virtio::GuestMem;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The driver side of one split virtqueue, laid out at a fixed guest address.
#[derive(Debug)]
pub struct DriverQueue {
    mem: GuestMem,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
    chains: HashMap<u16, Vec<u16>>,
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (GuestAddress, u32, bool);

impl DriverQueue {
    /// A queue of `size` entries whose rings start at `base` (needs
    /// `3 * 4096 + 16 * size` bytes there, rounded up).
    pub fn new(mem: &GuestMem, base: GuestAddress, size: u16) -> Self {
        let desc = base;
        let avail = GuestAddress(base.0 + (16 * u64::from(size)).next_multiple_of(4096));
        let used = GuestAddress(avail.0 + 4096 + (2 * u64::from(size)).next_multiple_of(4096));
        let q = DriverQueue {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
            chains: HashMap::new(),
        };
        for off in [0u64, 2] {
            q.w16(GuestAddress(avail.0 + off), 0);
            q.w16(GuestAddress(used.0 + off), 0);
        }
        q
    }

    fn w16(&self, a: GuestAddress, v: u16) {
        self.mem.write_obj(v.to_le(), a).expect("ring write");
    }

    /// A device-side [`Queue`] set up for this ring (ready).
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc.0 as u32), Some((self.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail.0 as u32), Some((self.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Free descriptors left.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = self.desc.0 + 16 * u64::from(i);
        self.mem
            .write_obj(addr.to_le(), GuestAddress(a))
            .expect("desc");
        self.mem
            .write_obj(len.to_le(), GuestAddress(a + 8))
            .expect("desc");
        self.w16(GuestAddress(a + 12), flags);
        self.w16(GuestAddress(a + 14), next);
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.w16(GuestAddress(self.avail.0 + 4 + 2 * slot), head);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.w16(GuestAddress(self.avail.0 + 2), self.avail_idx);
    }

    /// Make a chain of `bufs` available; returns its head, or `None` when
    /// the descriptors ran out.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return None;
        }
        let idx: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let next = if last { 0 } else { idx[k + 1] };
            self.write_desc(idx[k], addr.0, len, flags, next);
        }
        let head = idx[0];
        self.chains.insert(head, idx);
        self.publish(head);
        Some(head)
    }

    /// Make a chain available through one `VIRTQ_DESC_F_INDIRECT`
    /// descriptor whose table of `bufs` is written at `table`.
    pub fn add_indirect_chain(&mut self, table: GuestAddress, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() {
            return None;
        }
        let head = self.free.pop()?;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let a = table.0 + 16 * k as u64;
            self.mem
                .write_obj(addr.0.to_le(), GuestAddress(a))
                .expect("desc");
            self.mem
                .write_obj(len.to_le(), GuestAddress(a + 8))
                .expect("desc");
            self.w16(GuestAddress(a + 12), flags);
            self.w16(GuestAddress(a + 14), if last { 0 } else { k as u16 + 1 });
        }
        self.write_desc(head, table.0, 16 * bufs.len() as u32, F_INDIRECT, 0);
        self.chains.insert(head, vec![head]);
        self.publish(head);
        Some(head)
    }

    /// Point the single-descriptor chain `head` at another buffer (before
    /// the device takes it).
    pub fn rewrite_single(&mut self, head: u16, addr: u64, len: u32) {
        self.write_desc(head, addr, len, F_WRITE, 0);
    }

    /// Write raw descriptors (addr, len, flags, next) at indices
    /// `0..descs.len()` and make `head` available, whatever they contain.
    /// For malformed-chain tests; don't mix with [`DriverQueue::add_chain`].
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)], head: u16) {
        for (i, &(a, l, f, n)) in descs.iter().enumerate() {
            self.write_desc(i as u16, a, l, f, n);
        }
        self.publish(head);
    }

    /// Publish a raw avail index, valid or not (for malformed-ring tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.w16(GuestAddress(self.avail.0 + 2), idx);
    }

    /// The used entries (id, len) added since the last call; frees their
    /// descriptors.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let idx: u16 = u16::from_le(
            self.mem
                .read_obj(GuestAddress(self.used.0 + 2))
                .expect("used idx"),
        );
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let e = self.used.0 + 4 + 8 * slot;
            let id: u32 = u32::from_le(self.mem.read_obj(GuestAddress(e)).expect("used"));
            let len: u32 = u32::from_le(self.mem.read_obj(GuestAddress(e + 4)).expect("used"));
            if let Some(descs) = self.chains.remove(&(id as u16)) {
                self.free.extend(descs);
            }
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Entries made available and not yet used.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.used_seen)
    }
}
