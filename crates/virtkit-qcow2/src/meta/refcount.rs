//! Refcounts: the refcount-block cache, the refcount table (grown on
//! demand) and cluster allocation, with frees deferred to the next flush.

use virtkit_block::HostFile;

use super::encoding::{encode_table, rb_get, rb_set, RT_OFF_MASK};
use super::state::Meta;
use crate::error::{Qcow2Error, Result};
use crate::header::off;

impl Meta {
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

    pub fn set_free_hint(&mut self, c: u64) {
        self.free_hint = c;
    }
}
