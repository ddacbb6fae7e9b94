//! Creating empty qcow2 images.

use std::path::Path;

use virtkit_block::HostFile;

use crate::error::{Qcow2Error, Result};
use crate::format::ImageFormat;
use crate::header::{build_header, CompressionType, MAX_L1_BYTES};
use crate::meta::rb_set;

/// qcow2 compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// Version 2 ("0.10").
    V2,
    /// Version 3 ("1.1"), the default.
    #[default]
    V3,
}

/// Options for [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size in bytes: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    /// Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64 (16 for v2).
    pub refcount_bits: u32,
    /// Version.
    pub compat: Compat,
    /// Enable lazy refcounts (v3 only).
    pub lazy_refcounts: bool,
    /// Compression type for compressed clusters (zstd needs v3).
    pub compression: CompressionType,
    /// Backing file name as stored in the image (relative names resolve
    /// against the image's folder) and its format.
    pub backing: Option<(String, ImageFormat)>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            refcount_bits: 16,
            compat: Compat::V3,
            lazy_refcounts: false,
            compression: CompressionType::Zlib,
            backing: None,
        }
    }
}

fn invalid(s: impl Into<String>) -> Qcow2Error {
    Qcow2Error::InvalidOption(s.into())
}

/// Create a new empty qcow2 image at `path` (the file is created or
/// truncated).
pub fn create(path: impl AsRef<Path>, o: &CreateOptions) -> Result<()> {
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(invalid(format!(
            "cluster size {cs} must be a power of two from 512 to 2M"
        )));
    }
    let cb = cs.trailing_zeros();
    let rbits = o.refcount_bits;
    if !rbits.is_power_of_two() || rbits > 64 {
        return Err(invalid(format!(
            "refcount bits {rbits} must be a power of two up to 64"
        )));
    }
    let order = rbits.trailing_zeros();
    let version = match o.compat {
        Compat::V2 => {
            if rbits != 16 {
                return Err(invalid("compat 0.10 only supports 16-bit refcounts"));
            }
            if o.lazy_refcounts {
                return Err(invalid("lazy refcounts need compat 1.1"));
            }
            if o.compression != CompressionType::Zlib {
                return Err(invalid("zstd compression needs compat 1.1"));
            }
            2
        }
        Compat::V3 => 3,
    };
    let per_l1 = cs * (cs / 8);
    let l1_size = o.size.div_ceil(per_l1);
    if l1_size * 8 > MAX_L1_BYTES || o.size > (1u64 << 62) {
        return Err(Qcow2Error::TooLarge(format!(
            "size {} too large for {cs}-byte clusters",
            o.size
        )));
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let rb_entries = cs * 8 / u64::from(rbits);
    let (mut n_rt, mut n_rb) = (1u64, 1u64);
    loop {
        let total = 1 + n_rt + n_rb + l1_clusters;
        let need_rb = total.div_ceil(rb_entries);
        let need_rt = (need_rb * 8).div_ceil(cs);
        if need_rb == n_rb && need_rt == n_rt {
            break;
        }
        n_rb = need_rb;
        n_rt = need_rt;
    }
    let total = 1 + n_rt + n_rb + l1_clusters;
    let rt_off = cs;
    let rb_off = (1 + n_rt) * cs;
    let l1_off = (1 + n_rt + n_rb) * cs;
    let backing = o.backing.as_ref().map(|(n, f)| (n.as_str(), f.name()));
    let hdr = build_header(
        cs,
        version,
        o.size,
        cb,
        l1_size as u32,
        l1_off,
        rt_off,
        n_rt as u32,
        order,
        o.lazy_refcounts,
        o.compression,
        backing,
    )?;
    let mut rt = vec![0u8; (n_rt * cs) as usize];
    for i in 0..n_rb {
        let off = rb_off + i * cs;
        rt[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&off.to_be_bytes());
    }
    let mut rb = vec![0u8; (n_rb * cs) as usize];
    for c in 0..total {
        let blk = (c / rb_entries) as usize;
        let i = (c % rb_entries) as usize;
        rb_set(
            &mut rb[blk * cs as usize..(blk + 1) * cs as usize],
            i,
            order,
            1,
        );
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path.as_ref())
        .map_err(|source| Qcow2Error::Open {
            path: path.as_ref().display().to_string(),
            source,
        })?;
    let f = HostFile::from_file(file);
    f.write_at(&hdr, 0)?;
    f.write_at(&rt, rt_off)?;
    f.write_at(&rb, rb_off)?;
    f.set_len(total * cs)?;
    f.sync()?;
    Ok(())
}
