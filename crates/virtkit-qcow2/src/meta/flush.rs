//! Write-back of dirty metadata in the crash-safe order (see the module
//! documentation of `meta`), then the deferred refcount decrements.

use virtkit_block::HostFile;

use super::encoding::encode_table;
use super::state::Meta;
use crate::error::Result;

impl Meta {
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
}
