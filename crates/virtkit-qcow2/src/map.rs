//! Allocation maps (what `qemu-img map --output=json` prints).

use virtkit_block::{BlockBackend, HostFile};

use crate::error::{Qcow2Error, Result};
use crate::image::{Backing, Qcow2};
use crate::meta::Mapping;

/// One extent of the guest disk with uniform allocation status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Depth in the backing chain where the status was found (0 = top).
    pub depth: u32,
    /// Whether some image in the chain defines this range.
    pub present: bool,
    /// Whether the range reads as zeroes.
    pub zero: bool,
    /// Whether the range is stored as data.
    pub data: bool,
    /// Host offset in the file at `depth`, for uncompressed data.
    pub offset: Option<u64>,
    /// Whether the range is stored compressed.
    pub compressed: bool,
}

fn push(out: &mut Vec<MapEntry>, e: MapEntry) {
    if e.length == 0 {
        return;
    }
    if let Some(p) = out.last_mut() {
        let offsets_ok = match (p.offset, e.offset) {
            (None, None) => true,
            (Some(a), Some(b)) => a + p.length == b,
            _ => false,
        };
        if p.start + p.length == e.start
            && p.depth == e.depth
            && p.present == e.present
            && p.zero == e.zero
            && p.data == e.data
            && p.compressed == e.compressed
            && offsets_ok
        {
            p.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// Split host range `off..off+len` into (offset, length, is_data) by holes.
fn host_extents(f: &HostFile, off: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
    let mut out = Vec::new();
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let data = f.next_data(pos)?;
        match data {
            Some(d) if d == pos => {
                let h = f.next_hole(pos)?.unwrap_or(end).min(end);
                let h = if h <= pos { end } else { h };
                out.push((pos, h - pos, true));
                pos = h;
            }
            Some(d) => {
                let d = d.min(end);
                out.push((pos, d - pos, false));
                pos = d;
            }
            None => {
                out.push((pos, end - pos, false));
                pos = end;
            }
        }
    }
    Ok(out)
}

fn map_raw(
    f: &HostFile,
    size: u64,
    start: u64,
    len: u64,
    depth: u32,
    out: &mut Vec<MapEntry>,
) -> Result<()> {
    let inside = size.saturating_sub(start).min(len);
    for (o, l, data) in host_extents(f, start, inside)? {
        push(
            out,
            MapEntry {
                start: o,
                length: l,
                depth,
                present: true,
                zero: !data,
                data: true,
                offset: Some(o),
                compressed: false,
            },
        );
    }
    if inside < len {
        push(
            out,
            MapEntry {
                start: start + inside,
                length: len - inside,
                depth,
                present: false,
                zero: true,
                data: false,
                offset: None,
                compressed: false,
            },
        );
    }
    Ok(())
}

impl Qcow2 {
    /// The allocation map of the whole disk, following the backing chain
    /// when it was opened.
    pub fn map(&self) -> Result<Vec<MapEntry>> {
        let mut out = Vec::new();
        self.map_range(0, self.size, 0, &mut out)?;
        Ok(out)
    }

    fn map_range(&self, start: u64, len: u64, depth: u32, out: &mut Vec<MapEntry>) -> Result<()> {
        if self.header().extended_l2() {
            return Err(Qcow2Error::UnsupportedFeature(
                "maps of images with extended L2 entries",
            ));
        }
        let cs = 1u64 << self.cb;
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let gc = pos >> self.cb;
            let inoff = pos & (cs - 1);
            let n = (cs - inoff).min(end - pos);
            let map = {
                let mut m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
                m.mapping(&self.file, gc)?
            };
            let base = MapEntry {
                start: pos,
                length: n,
                depth,
                present: true,
                zero: false,
                data: true,
                offset: None,
                compressed: false,
            };
            match map {
                Mapping::Data { off, .. } => {
                    for (o, l, data) in host_extents(&self.file, off + inoff, n)? {
                        push(
                            out,
                            MapEntry {
                                start: pos + (o - off - inoff),
                                length: l,
                                zero: !data,
                                offset: Some(o),
                                ..base.clone()
                            },
                        );
                    }
                }
                Mapping::Compressed { .. } => push(
                    out,
                    MapEntry {
                        compressed: true,
                        ..base
                    },
                ),
                Mapping::Zero { .. } => push(
                    out,
                    MapEntry {
                        zero: true,
                        data: false,
                        ..base
                    },
                ),
                Mapping::Unallocated => match &self.backing {
                    Some(Backing::Qcow2(b)) => {
                        let inside = b.size.saturating_sub(pos).min(n);
                        if inside > 0 {
                            b.map_range(pos, inside, depth + 1, out)?;
                        }
                        if inside < n {
                            push(
                                out,
                                MapEntry {
                                    start: pos + inside,
                                    length: n - inside,
                                    depth: depth + 1,
                                    present: false,
                                    zero: true,
                                    data: false,
                                    ..base
                                },
                            );
                        }
                    }
                    Some(Backing::Raw(r)) => {
                        map_raw(r.host_file(), r.size(), pos, n, depth + 1, out)?;
                    }
                    None => push(
                        out,
                        MapEntry {
                            present: false,
                            zero: true,
                            data: false,
                            ..base
                        },
                    ),
                },
            }
            pos += n;
        }
        Ok(())
    }
}
