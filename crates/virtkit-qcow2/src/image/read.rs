//! The read path: resolving a guest range into zero, backing, data and
//! compressed segments under the metadata lock, then reading them outside it.

use virtkit_block::check_range;
use vm_memory::VolatileSlice;

use super::qcow2::{lock, Qcow2};
use crate::bounds::to_usize;
use crate::compress::decompress;
use crate::error::{Qcow2Error, Result};
use crate::meta::{Mapping, Meta};

/// A piece of a request after resolving its mapping.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Zero,
    Backing(u64),
    Data(u64),
    Compressed { off: u64, len: u64, skip: u64 },
}

impl Qcow2 {
    /// Resolve `offset..offset+len` into (segment, length) pieces.
    fn resolve(&self, m: &mut Meta, offset: u64, len: u64) -> Result<Vec<(Seg, u64)>> {
        let cs = 1u64 << self.cb;
        let mut out: Vec<(Seg, u64)> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let mut n = (cs - inoff).min(end - pos);
            let mut map = m.mapping(&self.file, gc)?;
            if m.l2_words == 2 && !matches!(map, Mapping::Compressed { .. }) {
                // Extended L2: 32 subclusters, each allocated, zero or absent.
                let sub = cs / 32;
                let sc = inoff / sub;
                n = n.min(sub - inoff % sub);
                let bitmap = m.l2_bitmap(&self.file, gc)?;
                map = if bitmap & (1 << sc) != 0 {
                    match map {
                        Mapping::Data { .. } => map,
                        _ => {
                            return Err(Qcow2Error::Corrupt(format!(
                                "guest cluster {gc}: allocated subcluster without a host cluster"
                            )))
                        }
                    }
                } else if bitmap & (1 << (32 + sc)) != 0 {
                    Mapping::Zero {
                        off: 0,
                        copied: false,
                    }
                } else {
                    Mapping::Unallocated
                };
            }
            let seg = match map {
                Mapping::Unallocated if self.backing.is_some() => Seg::Backing(pos),
                Mapping::Unallocated | Mapping::Zero { .. } => Seg::Zero,
                Mapping::Data { off, .. } => Seg::Data(off + inoff),
                Mapping::Compressed { off, len } => Seg::Compressed {
                    off,
                    len,
                    skip: inoff,
                },
            };
            match (out.last_mut(), seg) {
                (Some((Seg::Data(a), l)), Seg::Data(b)) if *a + *l == b => *l += n,
                (Some((Seg::Zero, l)), Seg::Zero) => *l += n,
                (Some((Seg::Backing(a), l)), Seg::Backing(b)) if *a + *l == b => *l += n,
                _ => out.push((seg, n)),
            }
            pos += n;
        }
        Ok(out)
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let b = b.dev();
        let bsize = b.size();
        let avail = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            b.read_at(&mut buf[..avail], offset)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Decompress the cluster whose compressed data starts at `off`.
    fn read_compressed(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        let cs = 1usize << self.cb;
        let flen = self.file.len()?;
        if off >= flen {
            return Err(Qcow2Error::Corrupt(format!(
                "compressed cluster at {off:#x} starts past the end of the file"
            )));
        }
        let avail = flen - off;
        let mut len = len;
        if len > avail {
            // The last sector may be partly past the end of the file.
            if len - avail >= 512 {
                return Err(Qcow2Error::Corrupt(format!(
                    "compressed cluster at {off:#x} ({len} bytes) runs past the end of the file"
                )));
            }
            len = avail;
        }
        let mut src = vec![0u8; to_usize("compressed cluster", len)?];
        self.file.read_at(&mut src, off)?;
        decompress(self.compression, &src, cs)
            .map_err(|why| Qcow2Error::Corrupt(format!("compressed cluster at {off:#x}: {why}")))
    }

    pub(super) fn read_impl(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let segs = {
            let mut m = lock(&self.meta);
            self.resolve(&mut m, offset, buf.len() as u64)?
        };
        let mut pos = 0usize;
        for (seg, n) in segs {
            let n = n as usize;
            self.read_seg(seg, &mut buf[pos..pos + n])?;
            pos += n;
        }
        Ok(())
    }

    /// Fill `out` from one resolved segment.
    fn read_seg(&self, seg: Seg, out: &mut [u8]) -> Result<()> {
        match seg {
            Seg::Zero => out.fill(0),
            Seg::Data(o) => self.file.read_at(out, o)?,
            Seg::Backing(o) => self.read_backing(out, o)?,
            Seg::Compressed { off, len, skip } => {
                let c = self.read_compressed(off, len)?;
                out.copy_from_slice(&c[skip as usize..skip as usize + out.len()]);
            }
        }
        Ok(())
    }

    /// [`Qcow2::read_impl`] into memory behind a volatile slice: allocated data goes
    /// from the image file straight into that memory, the rest through a buffer.
    pub(super) fn read_volatile_impl(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let segs = {
            let mut m = lock(&self.meta);
            self.resolve(&mut m, offset, buf.len() as u64)?
        };
        let mut pos = 0usize;
        let mut tmp = Vec::new();
        for (seg, n) in segs {
            let n = n as usize;
            let part = buf
                .subslice(pos, n)
                .map_err(|e| Qcow2Error::Corrupt(format!("segment outside the request: {e}")))?;
            let ptr = part.ptr_guard_mut();
            match seg {
                Seg::Data(o) if !self.file.needs_bounce(ptr.as_ptr(), n, o) => {
                    // SAFETY: the guard keeps `part` mapped and valid for n bytes of
                    // writes; pread fills it without a Rust reference to it.
                    unsafe { self.file.read_raw(ptr.as_ptr(), n, o) }?;
                }
                _ => {
                    tmp.resize(n, 0);
                    self.read_seg(seg, &mut tmp)?;
                    part.copy_from(&tmp[..]);
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Current contents of guest cluster `gc` given its mapping (for COW).
    pub(super) fn cluster_content(&self, map: Mapping, gc: u64) -> Result<Vec<u8>> {
        let cs = 1usize << self.cb;
        Ok(match map {
            Mapping::Unallocated => {
                let mut v = vec![0u8; cs];
                self.read_backing(&mut v, gc << self.cb)?;
                v
            }
            Mapping::Zero { .. } => vec![0u8; cs],
            Mapping::Data { off, .. } => {
                let mut v = vec![0u8; cs];
                self.file.read_at(&mut v, off)?;
                v
            }
            Mapping::Compressed { off, len } => self.read_compressed(off, len)?,
        })
    }
}
