//! Metadata state of an open image: L1 table, L2 and refcount-block caches,
//! cluster allocation and the crash-safe write-back order.
//!
//! Ordering rules (what makes a kill -9 or power loss leave only leaks):
//! - a new cluster's refcount reaches the disk (and is synced) before any L2
//!   or L1 entry that points at it;
//! - an L2 table reaches the disk (and is synced) before the L1 entry that
//!   points at it;
//! - a cluster's refcount is lowered only after the table entries that no
//!   longer reference it are on disk (frees are deferred to the next flush),
//!   so a freed cluster is never reused while the disk still points at it.

use virtkit_block::HostFile;

use crate::bounds::{range_end, to_usize};
use crate::cache::Cache;
use crate::error::{Qcow2Error, Result};
use crate::header::{off, Header};

pub(crate) const OFF_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const COPIED: u64 = 1 << 63;
pub(crate) const COMPRESSED: u64 = 1 << 62;
pub(crate) const ZERO: u64 = 1;
const RT_OFF_MASK: u64 = !0x1ff;

/// What one L2 entry says about a guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not allocated: read from the backing file, or zeroes.
    Unallocated,
    /// Reads as zeroes; `off` is a preallocated host cluster or 0.
    Zero { off: u64, copied: bool },
    /// Data at host offset `off`.
    Data { off: u64, copied: bool },
    /// Compressed data: `off` is a byte offset, `len` the bytes to read.
    Compressed { off: u64, len: u64 },
}

impl Mapping {
    /// Host clusters this mapping holds a reference on (first, count).
    pub fn host_clusters(&self, cluster_bits: u32) -> Option<(u64, u64)> {
        match *self {
            Mapping::Data { off, .. } | Mapping::Zero { off, .. } if off != 0 => {
                Some((off >> cluster_bits, 1))
            }
            Mapping::Compressed { off, len } => {
                let first = off >> cluster_bits;
                let last = (off + len - 1) >> cluster_bits;
                Some((first, last - first + 1))
            }
            _ => None,
        }
    }
}

pub(crate) fn decode_l2(e: u64, cluster_bits: u32) -> Result<Mapping> {
    let cs = 1u64 << cluster_bits;
    if e & COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let off = e & ((1u64 << x) - 1);
        let sectors = (e >> x) & ((1u64 << (cluster_bits - 8)) - 1);
        let len = (sectors + 1) * 512 - (off & 511);
        if off == 0 {
            return Err(Qcow2Error::Corrupt(format!(
                "compressed L2 entry {e:#x} has offset 0"
            )));
        }
        return Ok(Mapping::Compressed { off, len });
    }
    let off = e & OFF_MASK;
    let copied = e & COPIED != 0;
    if off % cs != 0 {
        return Err(Qcow2Error::Corrupt(format!(
            "L2 entry {e:#x}: data offset {off:#x} not cluster aligned"
        )));
    }
    if e & ZERO != 0 {
        return Ok(Mapping::Zero { off, copied });
    }
    if off == 0 {
        return Ok(Mapping::Unallocated);
    }
    Ok(Mapping::Data { off, copied })
}

fn rb_get(b: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let byte = b[i / per];
            u64::from((byte >> ((i % per) * bits)) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(b[i]),
        4 => u64::from(u16::from_be_bytes([b[2 * i], b[2 * i + 1]])),
        5 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[4 * i..4 * i + 4]);
            u64::from(u32::from_be_bytes(a))
        }
        _ => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[8 * i..8 * i + 8]);
            u64::from_be_bytes(a)
        }
    }
}

pub(crate) fn rb_set(b: &mut [u8], i: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let byte = &mut b[i / per];
            *byte = (*byte & !mask) | (((v as u8) << shift) & mask);
        }
        3 => b[i] = v as u8,
        4 => b[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => b[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => b[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

fn decode_table(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

fn encode_table(t: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(t.len() * 8);
    for e in t {
        v.extend_from_slice(&e.to_be_bytes());
    }
    v
}

/// Mutable metadata of an open image; always used under the image's lock.
#[derive(Debug)]
pub(crate) struct Meta {
    pub h: Header,
    pub cb: u32,
    pub cs: u64,
    pub l2_entries: u64,
    /// Words per L2 entry: 1, or 2 with extended L2 entries.
    pub l2_words: u64,
    pub l1: Vec<u64>,
    l1_dirty: Vec<usize>,
    pub l2: Cache<Vec<u64>>,
    rb: Cache<Vec<u8>>,
    pub reftable: Vec<u64>,
    reftable_disk_entries: usize,
    rb_bits: u32,
    free_hint: u64,
    pending_frees: Vec<(u64, u64)>,
    /// While repairing: expected refcounts; allocation avoids clusters in use here.
    pub reserved: Option<Vec<u64>>,
    compressed_cursor: u64,
    growing: bool,
    /// Metadata ranges never handed out by the allocator (offset, end).
    pub fixed: Vec<(u64, u64)>,
    /// Guest clusters whose new data is being written outside the lock.
    pub inflight: std::collections::HashSet<u64>,
}

impl Meta {
    pub fn new(
        f: &HostFile,
        h: Header,
        l2_cache_bytes: usize,
        rb_cache_bytes: usize,
    ) -> Result<Meta> {
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        // Header::parse bounded both tables (32 MiB and 8 MiB, inside the
        // file); the arithmetic is checked all the same.
        let l1_bytes = h.l1_bytes()?;
        let mut l1buf = vec![0u8; to_usize("L1 table", l1_bytes)?];
        f.read_at(&mut l1buf, h.l1_table_offset)?;
        let l1 = decode_table(&l1buf);
        let rt_bytes = h.refcount_table_bytes()?;
        let mut rtbuf = vec![0u8; to_usize("refcount table", rt_bytes)?];
        f.read_at(&mut rtbuf, h.refcount_table_offset)?;
        let reftable = decode_table(&rtbuf);
        let rb_bits = cb + 3 - h.refcount_order;
        let l2_words = if h.extended_l2() { 2 } else { 1 };
        let l2_cap = (l2_cache_bytes as u64 / cs).clamp(4, 65536) as usize;
        let rb_cap = (rb_cache_bytes as u64 / cs).clamp(4, 65536) as usize;
        let fixed = vec![
            (0, cs),
            (
                h.l1_table_offset,
                range_end("L1 table", h.l1_table_offset, l1_bytes)?,
            ),
            (
                h.refcount_table_offset,
                range_end("refcount table", h.refcount_table_offset, rt_bytes)?,
            ),
        ];
        Ok(Meta {
            cb,
            cs,
            l2_entries: cs / (8 * l2_words),
            l2_words,
            l1,
            l1_dirty: Vec::new(),
            l2: Cache::new(l2_cap),
            rb: Cache::new(rb_cap),
            reftable_disk_entries: reftable.len(),
            reftable,
            rb_bits,
            free_hint: 1,
            pending_frees: Vec::new(),
            reserved: None,
            compressed_cursor: 0,
            growing: false,
            fixed,
            inflight: Default::default(),
            h,
        })
    }

    pub fn refcount_max(&self) -> u64 {
        if self.h.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.h.refcount_order)) - 1
        }
    }

    pub fn file_end_check(&self, f: &HostFile, what: &'static str, off: u64) -> Result<()> {
        if off == 0 || off % self.cs != 0 || off >= f.len()? {
            return Err(Qcow2Error::Corrupt(format!(
                "{what} offset {off:#x} is invalid (zero, unaligned or past the end of the file)"
            )));
        }
        Ok(())
    }

    fn overlaps_fixed(&self, off: u64, len: u64) -> bool {
        self.fixed.iter().any(|&(s, e)| off < e && s < off + len)
    }

    // ---------------------------------------------------------------- L2

    /// Make sure the L2 table at `l2_off` is cached.
    pub fn l2_load(&mut self, f: &HostFile, l2_off: u64) -> Result<()> {
        if self.l2.contains(l2_off) {
            return Ok(());
        }
        self.file_end_check(f, "L2 table", l2_off)?;
        if self.overlaps_fixed(l2_off, self.cs) {
            return Err(Qcow2Error::Corrupt(format!(
                "L2 table at {l2_off:#x} overlaps the header, L1 or refcount table"
            )));
        }
        let mut buf = vec![0u8; self.cs as usize];
        f.read_at(&mut buf, l2_off)?;
        self.l2_insert(f, l2_off, decode_table(&buf), false)
    }

    fn l2_insert(&mut self, f: &HostFile, l2_off: u64, t: Vec<u64>, dirty: bool) -> Result<()> {
        if self.l2.full() {
            if let Some((k, s)) = self.l2.pop_lru() {
                if s.dirty {
                    self.write_refblocks(f)?;
                    f.sync()?;
                    f.write_at(&encode_table(&s.data), k)?;
                }
            }
        }
        self.l2.insert(l2_off, t, dirty);
        Ok(())
    }

    /// The raw L2 entry of guest cluster `gc` (0 if its L2 table is absent).
    pub fn l2_entry(&mut self, f: &HostFile, gc: u64) -> Result<u64> {
        let l1i = (gc / self.l2_entries) as usize;
        let Some(&l1e) = self.l1.get(l1i) else {
            return Ok(0);
        };
        let l2_off = l1e & OFF_MASK;
        if l2_off == 0 {
            return Ok(0);
        }
        self.l2_load(f, l2_off)?;
        let i = ((gc % self.l2_entries) * self.l2_words) as usize;
        Ok(self.l2.get(l2_off).map_or(0, |s| s.data[i]))
    }

    /// The subcluster bitmap of guest cluster `gc` (extended L2 only):
    /// bits 0..32 allocated, bits 32..64 reads-as-zero.
    pub fn l2_bitmap(&mut self, f: &HostFile, gc: u64) -> Result<u64> {
        let l1i = (gc / self.l2_entries) as usize;
        let Some(&l1e) = self.l1.get(l1i) else {
            return Ok(0);
        };
        let l2_off = l1e & OFF_MASK;
        if l2_off == 0 || self.l2_words != 2 {
            return Ok(0);
        }
        self.l2_load(f, l2_off)?;
        let i = ((gc % self.l2_entries) * 2 + 1) as usize;
        Ok(self.l2.get(l2_off).map_or(0, |s| s.data[i]))
    }

    pub fn mapping(&mut self, f: &HostFile, gc: u64) -> Result<Mapping> {
        let e = self.l2_entry(f, gc)?;
        decode_l2(e, self.cb)
    }

    /// The L2 table for guest cluster `gc`, made private to the active L1
    /// (allocated if absent, copied if shared with a snapshot).
    pub fn l2_for_write(&mut self, f: &HostFile, gc: u64) -> Result<u64> {
        let l1i = (gc / self.l2_entries) as usize;
        let l1e = *self
            .l1
            .get(l1i)
            .ok_or_else(|| Qcow2Error::Corrupt("guest offset beyond the L1 table".into()))?;
        let old = l1e & OFF_MASK;
        if old != 0 && l1e & COPIED != 0 {
            self.l2_load(f, old)?;
            return Ok(old);
        }
        let table = if old == 0 {
            vec![0u64; self.l2_entries as usize]
        } else {
            self.l2_load(f, old)?;
            let t = self.l2.get(old).map(|s| s.data.clone()).unwrap_or_default();
            // Shared with a snapshot: every data cluster is shared too.
            t.into_iter()
                .map(|e| if e & COMPRESSED != 0 { e } else { e & !COPIED })
                .collect()
        };
        let new = self.alloc(f, 1)?;
        self.l2_insert(f, new, table, true)?;
        self.l1[l1i] = new | COPIED;
        self.l1_dirty.push(l1i);
        if old != 0 {
            self.free_later(old >> self.cb, 1);
        }
        Ok(new)
    }

    pub fn set_l2(&mut self, l2_off: u64, gc: u64, e: u64) -> Result<()> {
        let i = (gc % self.l2_entries) as usize;
        let s = self
            .l2
            .get(l2_off)
            .ok_or_else(|| Qcow2Error::Corrupt("L2 table vanished from the cache".into()))?;
        s.data[i] = e;
        s.dirty = true;
        Ok(())
    }

    // ---------------------------------------------------------- refcounts

    fn rb_load(&mut self, f: &HostFile, rb_off: u64) -> Result<()> {
        if self.rb.contains(rb_off) {
            return Ok(());
        }
        self.file_end_check(f, "refcount block", rb_off)?;
        let mut buf = vec![0u8; self.cs as usize];
        f.read_at(&mut buf, rb_off)?;
        self.rb_insert(f, rb_off, buf, false)
    }

    fn rb_insert(&mut self, f: &HostFile, off: u64, b: Vec<u8>, dirty: bool) -> Result<()> {
        if self.rb.full() {
            if let Some((k, s)) = self.rb.pop_lru() {
                if s.dirty {
                    // Raising refcounts early is always safe (at worst a leak).
                    f.write_at(&s.data, k)?;
                }
            }
        }
        self.rb.insert(off, b, dirty);
        Ok(())
    }

    pub fn refcount(&mut self, f: &HostFile, c: u64) -> Result<u64> {
        let ti = (c >> self.rb_bits) as usize;
        let Some(&rte) = self.reftable.get(ti) else {
            return Ok(0);
        };
        let rb_off = rte & RT_OFF_MASK;
        if rb_off == 0 {
            return Ok(0);
        }
        self.rb_load(f, rb_off)?;
        let i = (c & ((1 << self.rb_bits) - 1)) as usize;
        let order = self.h.refcount_order;
        Ok(self.rb.get(rb_off).map_or(0, |s| rb_get(&s.data, i, order)))
    }

    pub fn set_refcount(&mut self, f: &HostFile, c: u64, v: u64) -> Result<()> {
        if v > self.refcount_max() {
            return Err(Qcow2Error::TooLarge(format!(
                "refcount of cluster {c} would exceed {}",
                self.refcount_max()
            )));
        }
        let ti = c >> self.rb_bits;
        self.ensure_refblock(f, ti)?;
        let rb_off = self.reftable[ti as usize] & RT_OFF_MASK;
        self.rb_load(f, rb_off)?;
        let i = (c & ((1 << self.rb_bits) - 1)) as usize;
        let order = self.h.refcount_order;
        let s = self
            .rb
            .get(rb_off)
            .ok_or_else(|| Qcow2Error::Corrupt("refcount block vanished from the cache".into()))?;
        rb_set(&mut s.data, i, order, v);
        s.dirty = true;
        Ok(())
    }

    fn is_free(&mut self, f: &HostFile, c: u64) -> Result<bool> {
        if let Some(r) = &self.reserved {
            if r.get(c as usize).is_some_and(|&x| x != 0) {
                return Ok(false);
            }
        }
        if self.overlaps_fixed(c << self.cb, self.cs) {
            return Ok(false);
        }
        Ok(self.refcount(f, c)? == 0)
    }

    /// First run of `n` free clusters at or after the free hint.
    fn find_free(&mut self, f: &HostFile, n: u64) -> Result<u64> {
        let mut start = self.free_hint.max(1);
        let mut c = start;
        let limit = 1u64 << (56 - self.cb);
        let mut seen_free = false;
        loop {
            if c >= limit {
                return Err(Qcow2Error::TooLarge("no free cluster left".into()));
            }
            if self.is_free(f, c)? {
                if !seen_free {
                    seen_free = true;
                    self.free_hint = c;
                }
                if c + 1 - start >= n {
                    return Ok(start);
                }
            } else {
                start = c + 1;
            }
            c += 1;
        }
    }

    /// Make sure refcount table entry `ti` has a refcount block.
    fn ensure_refblock(&mut self, f: &HostFile, ti: u64) -> Result<()> {
        let tiu = ti as usize;
        loop {
            if tiu >= self.reftable.len() {
                self.grow_reftable(f, tiu + 1)?;
            }
            if self.reftable[tiu] & RT_OFF_MASK != 0 {
                return Ok(());
            }
            let c = self.find_free(f, 1)?;
            let cti = c >> self.rb_bits;
            let mut blk = vec![0u8; self.cs as usize];
            if cti == ti {
                // The new block describes itself.
                let i = (c & ((1 << self.rb_bits) - 1)) as usize;
                rb_set(&mut blk, i, self.h.refcount_order, 1);
            } else {
                let ctiu = cti as usize;
                if ctiu >= self.reftable.len() || self.reftable[ctiu] & RT_OFF_MASK == 0 {
                    self.ensure_refblock(f, cti)?;
                    continue;
                }
                if !self.is_free(f, c)? {
                    continue;
                }
                self.set_refcount(f, c, 1)?;
                self.write_refblocks(f)?;
            }
            if let Some(r) = &mut self.reserved {
                if let Some(x) = r.get_mut(c as usize) {
                    *x += 1;
                }
            }
            let off = c << self.cb;
            f.write_at(&blk, off)?;
            f.sync()?;
            self.rb_insert(f, off, blk, false)?;
            self.reftable[tiu] = off;
            if tiu < self.reftable_disk_entries {
                f.write_at(&off.to_be_bytes(), self.h.refcount_table_offset + ti * 8)?;
            }
            if self.free_hint == c {
                self.free_hint = c + 1;
            }
            return Ok(());
        }
    }

    fn grow_reftable(&mut self, f: &HostFile, min_entries: usize) -> Result<()> {
        if self.growing {
            return Err(Qcow2Error::TooLarge(
                "refcount table growth needed while growing it".into(),
            ));
        }
        let per_cluster = (self.cs / 8) as usize;
        let file_clusters = f.len()?.div_ceil(self.cs);
        // Cover the file with generous room, so the new table and the blocks
        // describing it fit without growing again.
        let want_clusters =
            (file_clusters * 2 + (4u64 << self.rb_bits)).max((min_entries as u64) << self.rb_bits);
        let entries = ((want_clusters >> self.rb_bits) as usize + 1)
            .max(self.reftable.len() * 2)
            .max(min_entries)
            .div_ceil(per_cluster)
            * per_cluster;
        let bytes = entries as u64 * 8;
        if bytes > crate::header::MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::TableTooLarge {
                what: "refcount table",
                size: bytes,
                limit: crate::header::MAX_REFTABLE_BYTES,
            });
        }
        self.growing = true;
        let r = self.grow_reftable_to(f, entries);
        self.growing = false;
        r
    }

    fn grow_reftable_to(&mut self, f: &HostFile, entries: usize) -> Result<()> {
        let old_off = self.h.refcount_table_offset;
        let old_clusters = u64::from(self.h.refcount_table_clusters);
        self.reftable.resize(entries, 0);
        let new_clusters = (entries as u64 * 8) / self.cs;
        let new_off = self.alloc(f, new_clusters)?;
        // Every block the new table names must be on disk first.
        self.write_refblocks(f)?;
        f.write_at(&encode_table(&self.reftable), new_off)?;
        f.sync()?;
        let mut hb = [0u8; 12];
        hb[..8].copy_from_slice(&new_off.to_be_bytes());
        hb[8..].copy_from_slice(&(new_clusters as u32).to_be_bytes());
        f.write_at(&hb, off::REFTABLE_OFFSET)?;
        f.sync()?;
        self.h.refcount_table_offset = new_off;
        self.h.refcount_table_clusters = new_clusters as u32;
        self.reftable_disk_entries = entries;
        self.fixed[2] = (new_off, new_off + new_clusters * self.cs);
        self.free_later(old_off >> self.cb, old_clusters);
        Ok(())
    }

    /// Allocate `n` contiguous clusters with refcount 1; returns the offset.
    pub fn alloc(&mut self, f: &HostFile, n: u64) -> Result<u64> {
        'search: loop {
            let s = self.find_free(f, n)?;
            let first = s >> self.rb_bits;
            let last = (s + n - 1) >> self.rb_bits;
            for ti in first..=last {
                let tiu = ti as usize;
                if tiu >= self.reftable.len() || self.reftable[tiu] & RT_OFF_MASK == 0 {
                    self.ensure_refblock(f, ti)?;
                    continue 'search;
                }
            }
            for c in s..s + n {
                self.set_refcount(f, c, 1)?;
                if let Some(r) = &mut self.reserved {
                    if let Some(x) = r.get_mut(c as usize) {
                        *x += 1;
                    }
                }
            }
            if self.free_hint == s {
                self.free_hint = s + n;
            }
            return Ok(s << self.cb);
        }
    }

    /// Queue `n` clusters from `c` for a refcount decrement at the next flush.
    pub fn free_later(&mut self, c: u64, n: u64) {
        self.pending_frees.push((c, n));
    }

    pub fn has_pending_frees(&self) -> bool {
        !self.pending_frees.is_empty()
    }

    /// Add one reference to cluster `c` (a compressed cluster sharing a host cluster).
    pub fn add_ref(&mut self, f: &HostFile, c: u64) -> Result<()> {
        let r = self.refcount(f, c)?;
        self.set_refcount(f, c, r + 1)
    }

    /// Where the next compressed cluster of `len` bytes goes.
    pub fn alloc_compressed(&mut self, f: &HostFile, len: u64) -> Result<u64> {
        let cur = self.compressed_cursor;
        if cur != 0 && (cur % self.cs) + len <= self.cs && cur % self.cs != 0 {
            self.add_ref(f, cur >> self.cb)?;
            self.compressed_cursor = cur + len;
            return Ok(cur);
        }
        let o = self.alloc(f, 1)?;
        self.compressed_cursor = o + len;
        Ok(o)
    }

    // -------------------------------------------------------------- flush

    pub fn write_refblocks(&mut self, f: &HostFile) -> Result<bool> {
        let keys = self.rb.dirty_keys();
        for k in &keys {
            if let Some(s) = self.rb.get(*k) {
                f.write_at(&s.data, *k)?;
                s.dirty = false;
            }
        }
        Ok(!keys.is_empty())
    }

    fn write_l2s(&mut self, f: &HostFile) -> Result<bool> {
        let keys = self.l2.dirty_keys();
        for k in &keys {
            if let Some(s) = self.l2.get(*k) {
                f.write_at(&encode_table(&s.data), *k)?;
                s.dirty = false;
            }
        }
        Ok(!keys.is_empty())
    }

    fn write_l1(&mut self, f: &HostFile) -> Result<()> {
        let mut d = std::mem::take(&mut self.l1_dirty);
        d.sort_unstable();
        d.dedup();
        let mut i = 0;
        while i < d.len() {
            let mut j = i + 1;
            while j < d.len() && d[j] == d[j - 1] + 1 {
                j += 1;
            }
            let buf = encode_table(&self.l1[d[i]..=d[j - 1]]);
            f.write_at(&buf, self.h.l1_table_offset + d[i] as u64 * 8)?;
            i = j;
        }
        Ok(())
    }

    /// Write back everything in the crash-safe order and sync.
    pub fn flush(&mut self, f: &HostFile) -> Result<()> {
        self.write_refblocks(f)?;
        f.sync()?;
        let l1 = !self.l1_dirty.is_empty();
        if self.write_l2s(f)? || l1 {
            f.sync()?;
            if l1 {
                self.write_l1(f)?;
                f.sync()?;
            }
        }
        if !self.pending_frees.is_empty() {
            let frees = std::mem::take(&mut self.pending_frees);
            for (c, n) in frees {
                for x in c..c + n {
                    let r = self.refcount(f, x)?;
                    if r == 0 {
                        log::warn!("qcow2: freeing cluster {x} whose refcount is already 0");
                        continue;
                    }
                    self.set_refcount(f, x, r - 1)?;
                    if r == 1 {
                        self.free_hint = self.free_hint.min(x);
                        if self.compressed_cursor >> self.cb == x {
                            self.compressed_cursor = 0;
                        }
                    }
                }
            }
            self.write_refblocks(f)?;
            f.sync()?;
        }
        Ok(())
    }

    pub fn set_free_hint(&mut self, c: u64) {
        self.free_hint = c;
    }
}
