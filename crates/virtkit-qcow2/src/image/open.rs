//! Opening an image: header validation, the backing chain (loops and depth
//! refused), the snapshot list, and the refcount rebuild of a dirty image.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use virtkit_block::{HostFile, RawBackend, RawOptions};

use super::qcow2::{lock, Backing, BackingMode, OpenOptions, Qcow2};
use crate::consistency::Repair;
use crate::error::{Qcow2Error, Result};
use crate::header::{off, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::meta::Meta;
use crate::snapshot::read_snapshots;

impl Qcow2 {
    /// Open the qcow2 image at `path`.
    pub fn open(path: impl AsRef<Path>, opts: OpenOptions) -> Result<Qcow2> {
        Self::open_chain(path.as_ref(), &opts, &mut Vec::new())
    }

    pub(super) fn open_chain(
        path: &Path,
        opts: &OpenOptions,
        chain: &mut Vec<PathBuf>,
    ) -> Result<Qcow2> {
        let canon = std::fs::canonicalize(path).map_err(|source| Qcow2Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        if chain.contains(&canon) {
            return Err(Qcow2Error::BackingLoop(canon.display().to_string()));
        }
        if chain.len() > opts.max_backing_depth {
            return Err(Qcow2Error::BackingTooDeep(opts.max_backing_depth));
        }
        chain.push(canon);
        let file = HostFile::open(path, opts.read_only, opts.direct).map_err(|e| match e {
            virtkit_block::RawError::Open { path, source } => Qcow2Error::Open { path, source },
            virtkit_block::RawError::Io(e) => Qcow2Error::Io(e),
        })?;
        let len = file.len()?;
        let mut small = vec![0u8; len.min(104) as usize];
        file.read_at(&mut small, 0)?;
        if small.len() >= 4 && small[..4] != crate::header::MAGIC.to_be_bytes() {
            return Err(Qcow2Error::NotQcow2);
        }
        if small.len() < 72 {
            return Err(Qcow2Error::Truncated(len));
        }
        let cb = u32::from_be_bytes([small[20], small[21], small[22], small[23]]);
        if !(9..=21).contains(&cb) {
            return Err(Qcow2Error::InvalidClusterBits(cb));
        }
        let mut hbuf = vec![0u8; len.min(1 << cb) as usize];
        file.read_at(&mut hbuf, 0)?;
        let header = Header::parse(&hbuf, len)?;
        let mut read_only = opts.read_only;
        if header.extended_l2() && !read_only {
            return Err(Qcow2Error::UnsupportedFeature(
                "writing images with extended L2 entries (open them read-only)",
            ));
        }
        if header.incompatible_features & INCOMPAT_CORRUPT != 0 {
            if !read_only {
                log::warn!(
                    "qcow2: {} is marked corrupt; opening it read-only",
                    path.display()
                );
            }
            read_only = true;
        }
        let (backing, backing_path) = match (&header.backing_file, opts.backing) {
            (None, _) | (Some(_), BackingMode::Ignore) => (None, None),
            (Some(name), BackingMode::Deny) => {
                return Err(Qcow2Error::BackingNotAllowed(name.clone()))
            }
            (Some(name), BackingMode::Follow) => {
                let (b, p) =
                    open_backing(path, name, header.backing_format.as_deref(), opts, chain)
                        .map_err(|e| Qcow2Error::Backing {
                            name: name.clone(),
                            source: Box::new(e),
                        })?;
                (Some(b), Some(p))
            }
        };
        let snapshots = read_snapshots(&file, &header, len)?;
        let meta = Meta::new(
            &file,
            header.clone(),
            opts.l2_cache_bytes,
            opts.refcount_cache_bytes,
        )?;
        let q = Qcow2 {
            path: path.to_path_buf(),
            gate: RwLock::new(()),
            meta: Mutex::new(meta),
            inflight_cv: Condvar::new(),
            backing,
            backing_path,
            size: header.size,
            read_only,
            cb: header.cluster_bits,
            version: header.version,
            compression: header.compression,
            snapshots,
            dirty_bit: Mutex::new(header.incompatible_features & INCOMPAT_DIRTY != 0),
            header,
            file,
        };
        if !read_only {
            if q.header.autoclear_features != 0 {
                q.file.write_at(&0u64.to_be_bytes(), off::AUTOCLEAR)?;
                q.file.sync()?;
            }
            if *lock(&q.dirty_bit) && opts.repair_dirty {
                q.check(Repair::All)?;
                q.set_dirty_bit(false)?;
            }
        }
        Ok(q)
    }
}

fn open_backing(
    image: &Path,
    name: &str,
    format: Option<&str>,
    opts: &OpenOptions,
    chain: &mut Vec<PathBuf>,
) -> Result<(Backing, PathBuf)> {
    if name.starts_with("json:") || name.contains("://") {
        return Err(Qcow2Error::BadBackingName(format!(
            "{name:?} is not a file name"
        )));
    }
    let p = Path::new(name);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or_else(|| Path::new(".")).join(p)
    };
    let fmt = format.ok_or_else(|| Qcow2Error::BackingFormatMissing(name.to_string()))?;
    let sub = OpenOptions {
        read_only: true,
        repair_dirty: false,
        ..opts.clone()
    };
    let b = match fmt {
        "qcow2" => Backing::Qcow2(Arc::new(Qcow2::open_chain(&path, &sub, chain)?)),
        "raw" => {
            let canon = std::fs::canonicalize(&path).map_err(|source| Qcow2Error::Open {
                path: path.display().to_string(),
                source,
            })?;
            if chain.contains(&canon) {
                return Err(Qcow2Error::BackingLoop(canon.display().to_string()));
            }
            Backing::Raw(Arc::new(RawBackend::open(
                &path,
                RawOptions {
                    read_only: true,
                    direct: opts.direct,
                },
            )?))
        }
        other => return Err(Qcow2Error::BackingFormatUnsupported(other.to_string())),
    };
    Ok((b, path))
}
