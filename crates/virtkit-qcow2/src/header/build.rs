//! Writing the first cluster of a new image.

use super::fields::{
    CompressionType, COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, INCOMPAT_COMPRESSION, MAGIC,
    MAX_BACKING_NAME,
};
use crate::error::{Qcow2Error, Result};

/// Build the first cluster of a new image.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_header(
    cluster_size: u64,
    version: u32,
    size: u64,
    cluster_bits: u32,
    l1_size: u32,
    l1_offset: u64,
    rt_offset: u64,
    rt_clusters: u32,
    refcount_order: u32,
    lazy: bool,
    compression: CompressionType,
    backing: Option<(&str, &str)>,
) -> Result<Vec<u8>> {
    let mut b = vec![0u8; cluster_size as usize];
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_be_bytes());
    put32(&mut b, 0, MAGIC);
    put32(&mut b, 4, version);
    put32(&mut b, 20, cluster_bits);
    put64(&mut b, 24, size);
    put32(&mut b, 36, l1_size);
    put64(&mut b, 40, l1_offset);
    put64(&mut b, 48, rt_offset);
    put32(&mut b, 56, rt_clusters);
    let mut pos = 72usize;
    if version == 3 {
        let incompat = if compression == CompressionType::Zstd {
            INCOMPAT_COMPRESSION
        } else {
            0
        };
        put64(&mut b, 72, incompat);
        put64(&mut b, 80, if lazy { COMPAT_LAZY_REFCOUNTS } else { 0 });
        put32(&mut b, 96, refcount_order);
        put32(&mut b, 100, 112);
        b[104] = if compression == CompressionType::Zstd {
            1
        } else {
            0
        };
        pos = 112;
    }
    let too_big =
        || Qcow2Error::InvalidOption("backing file name does not fit in the header".into());
    if let Some((name, fmt)) = backing {
        if name.len() > MAX_BACKING_NAME as usize {
            return Err(Qcow2Error::BadBackingName(format!(
                "{} bytes (limit {MAX_BACKING_NAME})",
                name.len()
            )));
        }
        let padded = fmt.len().div_ceil(8) * 8;
        if pos + 8 + padded + 8 + name.len() > b.len() {
            return Err(too_big());
        }
        put32(&mut b, pos, EXT_BACKING_FORMAT);
        put32(&mut b, pos + 4, fmt.len() as u32);
        b[pos + 8..pos + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
        pos += 8 + padded;
        // End-of-extensions marker (already zero), then the name.
        pos += 8;
        b[pos..pos + name.len()].copy_from_slice(name.as_bytes());
        put64(&mut b, 8, pos as u64);
        put32(&mut b, 16, name.len() as u32);
    }
    Ok(b)
}
