//! The write path: a write is planned under the metadata lock (in-place
//! pieces, fresh clusters allocated and marked in flight), its data written
//! outside the lock, then its L2 entries committed. `write_slow` does it all
//! under the lock for callers that already hold the exclusive gate.

use virtkit_block::HostFile;

use super::qcow2::{lock, Qcow2};
use crate::error::{Qcow2Error, Result};
use crate::meta::{Mapping, Meta, COPIED};

/// One piece of a planned write.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// Overwrite allocated data in place.
    InPlace {
        host: u64,
        buf_off: usize,
        len: usize,
    },
    /// Whole fresh clusters `gc..gc+count` written at `host..`.
    Run {
        gc: u64,
        count: u64,
        host: u64,
        buf_off: usize,
    },
    /// One cluster written at `host` (new, or a preallocated zero cluster).
    Alloc {
        gc: u64,
        host: u64,
        inoff: u64,
        buf_off: usize,
        len: usize,
        old: Mapping,
        fresh: bool,
    },
}

impl Qcow2 {
    fn guard(&self, m: &Meta, off: u64, len: u64) -> Result<()> {
        if m.fixed.iter().any(|&(s, e)| off < e && s < off + len) {
            return Err(Qcow2Error::Corrupt(format!(
                "data cluster at {off:#x} overlaps image metadata"
            )));
        }
        Ok(())
    }

    /// Plan a write under the metadata lock: in-place pieces, and fresh
    /// clusters allocated now (marked in flight) whose data is written
    /// outside the lock and whose L2 entries are set afterwards. `None`
    /// means a cluster of the request is in flight for another writer.
    fn plan_write(
        &self,
        m: &mut Meta,
        buf: &[u8],
        offset: u64,
        plan: &mut Vec<Piece>,
    ) -> Result<bool> {
        let f = &self.file;
        let cs = 1u64 << self.cb;
        let end = offset + buf.len() as u64;
        let first = offset >> self.cb;
        let last = (end - 1) >> self.cb;
        if (first..=last).any(|gc| m.inflight.contains(&gc)) {
            return Ok(false);
        }
        let mut file_len = None;
        let mut pos = offset;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let n = (cs - inoff).min(end - pos);
            let b = (pos - offset) as usize;
            let l1i = (gc / m.l2_entries) as usize;
            let l1_copied = m.l1.get(l1i).is_some_and(|e| e & COPIED != 0);
            let map = m.mapping(f, gc)?;
            match map {
                Mapping::Data { off, copied: true } if l1_copied => {
                    self.guard(m, off, cs)?;
                    match plan.last_mut() {
                        Some(Piece::InPlace { host, len, .. })
                            if *host + *len as u64 == off + inoff =>
                        {
                            *len += n as usize
                        }
                        _ => plan.push(Piece::InPlace {
                            host: off + inoff,
                            buf_off: b,
                            len: n as usize,
                        }),
                    }
                    pos += n;
                    continue;
                }
                Mapping::Zero { off, copied: true } if off != 0 && l1_copied => {
                    self.guard(m, off, cs)?;
                    m.inflight.insert(gc);
                    plan.push(Piece::Alloc {
                        gc,
                        host: off,
                        inoff,
                        buf_off: b,
                        len: n as usize,
                        old: map,
                        fresh: false,
                    });
                    pos += n;
                    continue;
                }
                _ => {}
            }
            let fresh_map = matches!(map, Mapping::Unallocated | Mapping::Zero { off: 0, .. });
            if inoff == 0 && n == cs && fresh_map {
                // A run of whole fresh clusters in one L2 table: one allocation, one write.
                let table_end = (gc / m.l2_entries + 1) * m.l2_entries;
                let mut k = 1u64;
                while gc + k < table_end && pos + (k + 1) * cs <= end {
                    match m.mapping(f, gc + k)? {
                        Mapping::Unallocated | Mapping::Zero { off: 0, .. } => k += 1,
                        _ => break,
                    }
                }
                let host = m.alloc(f, k)?;
                for i in 0..k {
                    m.inflight.insert(gc + i);
                }
                plan.push(Piece::Run {
                    gc,
                    count: k,
                    host,
                    buf_off: b,
                });
                pos += k * cs;
                continue;
            }
            let host = m.alloc(f, 1)?;
            let flen = match file_len {
                Some(l) => l,
                None => *file_len.insert(f.len()?),
            };
            let reads_zero = match map {
                Mapping::Zero { .. } => true,
                Mapping::Unallocated => self.backing.is_none(),
                _ => false,
            };
            m.inflight.insert(gc);
            plan.push(Piece::Alloc {
                gc,
                host,
                inoff,
                buf_off: b,
                len: n as usize,
                old: map,
                fresh: reads_zero && host >= flen,
            });
            pos += n;
        }
        Ok(true)
    }

    fn write_pieces(&self, plan: &[Piece], buf: &[u8]) -> Result<()> {
        let f = &self.file;
        let cs = 1usize << self.cb;
        for p in plan {
            match *p {
                Piece::InPlace { host, buf_off, len } => {
                    f.write_at(&buf[buf_off..buf_off + len], host)?
                }
                Piece::Run {
                    count,
                    host,
                    buf_off,
                    ..
                } => f.write_at(&buf[buf_off..buf_off + count as usize * cs], host)?,
                Piece::Alloc {
                    gc,
                    host,
                    inoff,
                    buf_off,
                    len,
                    old,
                    fresh,
                } => {
                    let data = &buf[buf_off..buf_off + len];
                    if len == cs {
                        f.write_at(data, host)?;
                    } else if fresh {
                        // Past the end of the file: the rest already reads as zeroes.
                        f.write_at(data, host + inoff)?;
                    } else {
                        let mut c = match old {
                            Mapping::Zero { .. } => vec![0u8; cs],
                            other => self.cluster_content(other, gc)?,
                        };
                        c[inoff as usize..inoff as usize + len].copy_from_slice(data);
                        f.write_at(&c, host)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Point the L2 entries at the freshly written clusters and free what
    /// they replaced; always clears the in-flight marks.
    fn commit_pieces(&self, m: &mut Meta, plan: &[Piece], ok: bool) -> Result<()> {
        let f = &self.file;
        let cs = 1u64 << self.cb;
        let mut r = Ok(());
        for p in plan {
            let (gc0, count, host) = match *p {
                Piece::InPlace { .. } => continue,
                Piece::Run {
                    gc, count, host, ..
                } => (gc, count, host),
                Piece::Alloc { gc, host, .. } => (gc, 1, host),
            };
            for i in 0..count {
                let gc = gc0 + i;
                m.inflight.remove(&gc);
                if !ok || r.is_err() {
                    continue;
                }
                let h = host + i * cs;
                r = self.commit_one(m, f, gc, h);
            }
        }
        self.inflight_cv.notify_all();
        r
    }

    fn commit_one(&self, m: &mut Meta, f: &HostFile, gc: u64, h: u64) -> Result<()> {
        let l2 = m.l2_for_write(f, gc)?;
        let cur = m.mapping(f, gc)?;
        m.set_l2(l2, gc, h | COPIED)?;
        if let Some((c0, k)) = cur.host_clusters(self.cb) {
            if c0 != h >> self.cb {
                m.free_later(c0, k);
            }
        }
        Ok(())
    }

    pub(super) fn write_impl(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.before_slow_write()?;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut m = lock(&self.meta);
        let mut plan = Vec::new();
        loop {
            match self.plan_write(&mut m, buf, offset, &mut plan) {
                Ok(true) => break,
                Ok(false) => {
                    m = self.inflight_cv.wait(m).unwrap_or_else(|e| e.into_inner());
                }
                Err(e) => {
                    // Clear the in-flight marks of what was planned so far.
                    let _ = self.commit_pieces(&mut m, &plan, false);
                    return Err(e);
                }
            }
        }
        drop(m);
        let res = self.write_pieces(&plan, buf);
        let mut m = lock(&self.meta);
        let c = self.commit_pieces(&mut m, &plan, res.is_ok());
        res.and(c)
    }

    pub(super) fn write_slow(&self, m: &mut Meta, buf: &[u8], offset: u64) -> Result<()> {
        let f = &self.file;
        let cs = 1u64 << self.cb;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let n = (cs - inoff).min(end - pos);
            let b = (pos - offset) as usize;
            let l2 = m.l2_for_write(f, gc)?;
            let map = m.mapping(f, gc)?;
            // A run of whole fresh clusters in this L2 table: one allocation, one write.
            if inoff == 0
                && n == cs
                && matches!(map, Mapping::Unallocated | Mapping::Zero { off: 0, .. })
            {
                let table_end = (gc / m.l2_entries + 1) * m.l2_entries;
                let mut k = 1u64;
                while gc + k < table_end && pos + (k + 1) * cs <= end {
                    match m.mapping(f, gc + k)? {
                        Mapping::Unallocated | Mapping::Zero { off: 0, .. } => k += 1,
                        _ => break,
                    }
                }
                let host = m.alloc(f, k)?;
                f.write_at(&buf[b..b + (k * cs) as usize], host)?;
                for i in 0..k {
                    m.set_l2(l2, gc + i, (host + i * cs) | COPIED)?;
                }
                pos += k * cs;
                continue;
            }
            let chunk = &buf[b..b + n as usize];
            match map {
                Mapping::Data { off, copied: true } => {
                    self.guard(m, off, cs)?;
                    f.write_at(chunk, off + inoff)?;
                }
                Mapping::Zero { off, copied: true } if off != 0 => {
                    self.guard(m, off, cs)?;
                    let mut c = vec![0u8; cs as usize];
                    c[inoff as usize..(inoff + n) as usize].copy_from_slice(chunk);
                    f.write_at(&c, off)?;
                    m.set_l2(l2, gc, off | COPIED)?;
                }
                _ => {
                    let new = m.alloc(f, 1)?;
                    let reads_zero = match map {
                        Mapping::Zero { .. } => true,
                        Mapping::Unallocated => self.backing.is_none(),
                        _ => false,
                    };
                    if n == cs {
                        f.write_at(chunk, new)?;
                    } else if reads_zero && new >= f.len()? {
                        // A fresh cluster past the end of the file already
                        // reads as zeroes: write only the new bytes.
                        f.write_at(chunk, new + inoff)?;
                    } else {
                        let mut c = self.cluster_content(map, gc)?;
                        c[inoff as usize..(inoff + n) as usize].copy_from_slice(chunk);
                        f.write_at(&c, new)?;
                    }
                    m.set_l2(l2, gc, new | COPIED)?;
                    if let Some((c0, k)) = map.host_clusters(self.cb) {
                        m.free_later(c0, k);
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }
}
