//! Reference counting for internal snapshots: the clusters one L1 table
//! holds references on (counted per path, as the check counts them), adding
//! or dropping those references, recomputing the COPIED flags of the active
//! tables, and switching to a new active L1 table.

use std::collections::HashMap;

use virtkit_block::HostFile;

use super::encoding::{decode_l2, encode_table, COMPRESSED, COPIED, OFF_MASK};
use super::state::Meta;
use crate::bounds::{range_end, table_bytes, to_usize};
use crate::error::{Qcow2Error, Result};
use crate::header::off;

/// Host cluster runs (first cluster, count) one L1 table holds a reference
/// on each: its L2 tables and every cluster their entries point at.
pub(crate) type Refs = Vec<(u64, u64)>;

impl Meta {
    /// The references `l1` holds, every offset checked against the file
    /// (nothing is changed, so a corrupt table fails before any write).
    pub fn l1_refs(&mut self, f: &HostFile, l1: &[u64]) -> Result<Refs> {
        let clusters = f.len()?.div_ceil(self.cs);
        let mut out = Vec::new();
        for (i, &l1e) in l1.iter().enumerate() {
            let l2_off = l1e & OFF_MASK;
            if l2_off == 0 {
                continue;
            }
            self.l2_load(f, l2_off)?;
            out.push((l2_off >> self.cb, 1));
            let table =
                self.l2.get(l2_off).map(|s| s.data.clone()).ok_or_else(|| {
                    Qcow2Error::Corrupt("L2 table vanished from the cache".into())
                })?;
            for (j, &e) in table.iter().step_by(self.l2_words as usize).enumerate() {
                let Some((c0, n)) = decode_l2(e, self.cb)?.host_clusters(self.cb) else {
                    continue;
                };
                if c0.checked_add(n).is_none_or(|end| end > clusters) {
                    return Err(Qcow2Error::Corrupt(format!(
                        "L1 entry {i}, L2 entry {j}: host cluster {c0} is past the end of the file"
                    )));
                }
                out.push((c0, n));
            }
        }
        Ok(out)
    }

    /// Add one reference per entry of `refs`, checking first that no
    /// refcount would overflow (so a failure changes nothing).
    pub fn add_refs(&mut self, f: &HostFile, refs: &Refs) -> Result<()> {
        let mut adds: HashMap<u64, u64> = HashMap::new();
        for &(c0, n) in refs {
            for c in c0..c0 + n {
                *adds.entry(c).or_default() += 1;
            }
        }
        let max = self.refcount_max();
        for (&c, &k) in &adds {
            let r = self.refcount(f, c)?;
            if r.checked_add(k).is_none_or(|v| v > max) {
                return Err(Qcow2Error::TooLarge(format!(
                    "cluster {c} would be referenced {} times, more than {}-bit refcounts hold",
                    u128::from(r) + u128::from(k),
                    self.h.refcount_bits()
                )));
            }
        }
        for (c, k) in adds {
            let r = self.refcount(f, c)?;
            self.set_refcount(f, c, r + k)?;
        }
        Ok(())
    }

    /// Drop one reference per entry of `refs` at the next flush (after the
    /// tables that no longer hold them are on disk).
    pub fn drop_refs(&mut self, refs: &Refs) {
        for &(c0, n) in refs {
            self.free_later(c0, n);
        }
    }

    /// Set the COPIED flag of every active L1 and L2 entry whose cluster has
    /// refcount 1, and clear it where the cluster is shared.
    pub fn update_copied_flags(&mut self, f: &HostFile) -> Result<()> {
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2_off = l1e & OFF_MASK;
            if l2_off == 0 {
                continue;
            }
            let flag = |rc: u64, e: u64| if rc == 1 { e | COPIED } else { e & !COPIED };
            let rc = self.refcount(f, l2_off >> self.cb)?;
            if flag(rc, l1e) != l1e {
                self.l1[i] = flag(rc, l1e);
                self.l1_dirty.push(i);
            }
            self.l2_load(f, l2_off)?;
            let mut table =
                self.l2.get(l2_off).map(|s| s.data.clone()).ok_or_else(|| {
                    Qcow2Error::Corrupt("L2 table vanished from the cache".into())
                })?;
            let mut changed = false;
            for j in (0..table.len()).step_by(self.l2_words as usize) {
                let e = table[j];
                let host = e & OFF_MASK;
                if e & COMPRESSED != 0 || host == 0 {
                    continue;
                }
                let rc = self.refcount(f, host >> self.cb)?;
                if flag(rc, e) != e {
                    table[j] = flag(rc, e);
                    changed = true;
                }
            }
            if changed {
                self.l2_load(f, l2_off)?;
                let s = self.l2.get(l2_off).ok_or_else(|| {
                    Qcow2Error::Corrupt("L2 table vanished from the cache".into())
                })?;
                s.data = table;
                s.dirty = true;
            }
        }
        Ok(())
    }

    /// Write a table of 64-bit entries to newly allocated clusters (the
    /// rest of the last one zeroed) and sync it with their refcounts;
    /// returns its offset.
    pub fn write_new_table(&mut self, f: &HostFile, table: &[u64]) -> Result<u64> {
        self.write_new_bytes(f, encode_table(table))
    }

    /// Write `buf` (at least one byte) to newly allocated clusters and sync
    /// it with their refcounts; returns its offset.
    pub fn write_new_bytes(&mut self, f: &HostFile, mut buf: Vec<u8>) -> Result<u64> {
        let clusters = (buf.len() as u64).div_ceil(self.cs).max(1);
        let new_off = self.alloc(f, clusters)?;
        buf.resize(to_usize("new table", clusters * self.cs)?, 0);
        f.write_at(&buf, new_off)?;
        self.write_refblocks(f)?;
        f.sync()?;
        Ok(new_off)
    }

    /// Write `l1` to new clusters, then point the header at it (with the
    /// virtual size `size`) in one sector write; the old table is freed at
    /// the next flush. Dirty metadata must have been flushed.
    pub fn replace_l1(&mut self, f: &HostFile, l1: Vec<u64>, size: u64) -> Result<()> {
        let l1_size = u32::try_from(l1.len())
            .map_err(|_| Qcow2Error::TooLarge(format!("L1 table of {} entries", l1.len())))?;
        if l1.is_empty() {
            return Err(Qcow2Error::InvalidOption("an empty L1 table".into()));
        }
        let bytes = table_bytes("L1 table", u64::from(l1_size), 8)?;
        let new_off = self.write_new_table(f, &l1)?;
        // Size (24), crypt method (32), L1 size (36) and offset (40): one
        // write inside the first sector.
        let mut hb = [0u8; 24];
        f.read_at(&mut hb, off::SIZE)?;
        hb[..8].copy_from_slice(&size.to_be_bytes());
        hb[12..16].copy_from_slice(&l1_size.to_be_bytes());
        hb[16..].copy_from_slice(&new_off.to_be_bytes());
        f.write_at(&hb, off::SIZE)?;
        f.sync()?;
        let old_off = self.h.l1_table_offset;
        let old_clusters = self.h.l1_bytes()?.div_ceil(self.cs);
        self.h.size = size;
        self.h.l1_size = l1_size;
        self.h.l1_table_offset = new_off;
        self.fixed[1] = (new_off, range_end("L1 table", new_off, bytes)?);
        self.l1 = l1;
        self.l1_dirty.clear();
        if old_off != 0 && old_clusters > 0 {
            self.free_later(old_off >> self.cb, old_clusters);
        }
        Ok(())
    }
}
