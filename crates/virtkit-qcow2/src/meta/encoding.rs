//! On-disk encodings of the metadata: L2 entries, refcount-block entries
//! of every width, and big-endian tables of 64-bit words.

use crate::error::{Qcow2Error, Result};

pub(crate) const OFF_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const COPIED: u64 = 1 << 63;
pub(crate) const COMPRESSED: u64 = 1 << 62;
pub(crate) const ZERO: u64 = 1;
pub(super) const RT_OFF_MASK: u64 = !0x1ff;

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

pub(super) fn rb_get(b: &[u8], i: usize, order: u32) -> u64 {
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

pub(super) fn decode_table(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

pub(super) fn encode_table(t: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(t.len() * 8);
    for e in t {
        v.extend_from_slice(&e.to_be_bytes());
    }
    v
}
