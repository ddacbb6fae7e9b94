//! Write-zeroes and discard: whole clusters are unmapped (or made zero
//! clusters where a backing file shows through), partial ones written.

use super::qcow2::{lock, Qcow2};
use crate::error::Result;
use crate::meta::{Mapping, Meta, ZERO};

impl Qcow2 {
    /// Set whole clusters `first..first+count` to `target` (0 or ZERO),
    /// freeing what they held.
    fn unmap_clusters(&self, m: &mut Meta, first: u64, count: u64, target: u64) -> Result<()> {
        let f = &self.file;
        for gc in first..first + count {
            let map = m.mapping(f, gc)?;
            let same = matches!(
                (map, target),
                (Mapping::Unallocated, 0) | (Mapping::Zero { off: 0, .. }, ZERO)
            );
            if same {
                continue;
            }
            let l2 = m.l2_for_write(f, gc)?;
            m.set_l2(l2, gc, target)?;
            if let Some((c0, k)) = map.host_clusters(self.cb) {
                m.free_later(c0, k);
            }
        }
        Ok(())
    }

    pub(super) fn zero_or_discard(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        self.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let cs = 1u64 << self.cb;
        let backing = self.has_backing();
        let target = match (backing, self.version >= 3) {
            (false, _) => Some(0),
            (true, true) => Some(ZERO),
            (true, false) => None,
        };
        self.before_slow_write()?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut m = lock(&self.meta);
        let end = offset + len;
        // Whole clusters; the last cluster of the disk counts as whole when
        // the range reaches the end of the disk.
        let first = offset.div_ceil(cs);
        let last = if end == self.size {
            end.div_ceil(cs)
        } else {
            end / cs
        };
        let Some(target) = target else {
            if discard {
                return Ok(());
            }
            // v2 with a backing file: zeroes must be written out.
            let mut pos = offset;
            let zeros = vec![0u8; (1u64 << 20).min(len) as usize];
            while pos < end {
                let n = (end - pos).min(zeros.len() as u64);
                self.write_slow(&mut m, &zeros[..n as usize], pos)?;
                pos += n;
            }
            return Ok(());
        };
        if first >= last {
            if !discard {
                let zeros = vec![0u8; len as usize];
                self.write_slow(&mut m, &zeros, offset)?;
            }
            return Ok(());
        }
        if !discard {
            let head = (first * cs).min(end) - offset;
            if head > 0 {
                self.write_slow(&mut m, &vec![0u8; head as usize], offset)?;
            }
            let tail_start = (last * cs).min(end);
            if tail_start < end {
                self.write_slow(&mut m, &vec![0u8; (end - tail_start) as usize], tail_start)?;
            }
        }
        self.unmap_clusters(&mut m, first, last - first, target)
    }
}
