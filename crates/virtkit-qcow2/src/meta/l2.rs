//! The L1 table and the L2-table cache: lookups, copy-on-write of shared
//! L2 tables, entry updates.

use virtkit_block::HostFile;

use super::encoding::{
    decode_l2, decode_table, encode_table, Mapping, COMPRESSED, COPIED, OFF_MASK,
};
use super::state::Meta;
use crate::error::{Qcow2Error, Result};

impl Meta {
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
}
