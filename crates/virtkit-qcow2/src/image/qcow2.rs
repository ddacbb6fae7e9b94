//! The [`Qcow2`] type, its open options and the state shared by the read,
//! write and open paths: the I/O gate, the dirty bit and the write checks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use virtkit_block::{check_range, BlockBackend, HostFile, RawBackend};

use crate::consistency::{check_meta, CheckReport, CheckTarget, Repair};
use crate::error::{Qcow2Error, Result};
use crate::header::{off, CompressionType, Header, INCOMPAT_DIRTY};
use crate::meta::Meta;
use crate::snapshot::Snapshot;

/// What to do with an image's backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingMode {
    /// Refuse to open an image that has a backing file (the default).
    #[default]
    Deny,
    /// Open the backing chain (read-only), resolving relative names against
    /// the folder of the image that names them.
    Follow,
    /// Open the image alone; unallocated clusters read as zeroes. Meant for
    /// inspection tools (`info`, `check`, `map`).
    Ignore,
}

/// Options for [`Qcow2::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open read-only.
    pub read_only: bool,
    /// Backing file policy.
    pub backing: BackingMode,
    /// Use O_DIRECT for the image file.
    pub direct: bool,
    /// Most memory used by cached L2 tables (bytes).
    pub l2_cache_bytes: usize,
    /// Most memory used by cached refcount blocks (bytes).
    pub refcount_cache_bytes: usize,
    /// Longest backing chain accepted.
    pub max_backing_depth: usize,
    /// Rebuild refcounts when a writable image has the dirty bit set.
    pub repair_dirty: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            backing: BackingMode::Deny,
            direct: false,
            l2_cache_bytes: 32 << 20,
            refcount_cache_bytes: 4 << 20,
            max_backing_depth: 16,
            repair_dirty: true,
        }
    }
}

/// A qcow2 image opened as a block device.
///
/// Metadata lives behind one mutex; reads and in-place writes of allocated
/// clusters do their data I/O outside it. Operations that allocate or free
/// clusters hold an exclusive gate so no data I/O is in flight against a
/// cluster whose mapping changes.
#[derive(Debug)]
pub struct Qcow2 {
    pub(crate) file: HostFile,
    pub(crate) path: PathBuf,
    pub(super) gate: RwLock<()>,
    pub(crate) meta: Mutex<Meta>,
    pub(super) inflight_cv: Condvar,
    pub(crate) backing: Option<Backing>,
    pub(super) backing_path: Option<PathBuf>,
    pub(crate) size: u64,
    pub(crate) read_only: bool,
    pub(crate) cb: u32,
    pub(super) version: u32,
    pub(super) compression: CompressionType,
    pub(crate) snapshots: Vec<Snapshot>,
    pub(crate) header: Header,
    pub(super) dirty_bit: Mutex<bool>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An opened backing file.
#[derive(Debug, Clone)]
pub(crate) enum Backing {
    Qcow2(Arc<Qcow2>),
    Raw(Arc<RawBackend>),
}

impl Backing {
    pub(crate) fn dev(&self) -> &dyn BlockBackend {
        match self {
            Backing::Qcow2(q) => &**q,
            Backing::Raw(r) => &**r,
        }
    }
}

impl Qcow2 {
    /// Exclude all guest I/O (held while a check repairs refcounts).
    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Check the image and optionally repair refcounts (see
    /// [`crate::check::check_image`]). The image must be writable for a repair.
    pub(crate) fn check(&self, repair: Repair) -> Result<CheckReport> {
        if repair != Repair::None && self.read_only {
            return Err(Qcow2Error::ReadOnly);
        }
        // No guest write may be between allocating a cluster and pointing an L2
        // entry at it while refcounts are compared (and perhaps repaired).
        let _g = self.exclusive();
        let mut m = lock(&self.meta);
        if !self.read_only {
            m.flush(&self.file)?;
        }
        let target = CheckTarget {
            file: &self.file,
            disk_size: self.size,
            snapshots: &self.snapshots,
        };
        check_meta(&target, &mut m, repair)
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header as it was when the image was opened (snapshot operations
    /// update its size, L1 table and snapshot table fields).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cb
    }

    /// Internal snapshots.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The resolved path of the backing file, if it was opened.
    pub fn backing_path(&self) -> Option<&Path> {
        self.backing_path.as_deref()
    }

    /// Whether the dirty bit is currently set.
    pub fn is_dirty(&self) -> bool {
        *lock(&self.dirty_bit)
    }

    pub(crate) fn has_backing(&self) -> bool {
        self.backing.is_some() || self.header.backing_file.is_some()
    }

    pub(crate) fn set_dirty_bit(&self, on: bool) -> Result<()> {
        let mut d = lock(&self.dirty_bit);
        if *d == on {
            return Ok(());
        }
        // Header writes happen under the metadata lock (with O_DIRECT they
        // are read-modify-write of the first sector).
        let mut m = lock(&self.meta);
        let mut feat = m.h.incompatible_features & !INCOMPAT_DIRTY;
        if on {
            feat |= INCOMPAT_DIRTY;
        }
        if !on {
            self.file.sync()?;
        }
        self.file.write_at(&feat.to_be_bytes(), off::INCOMPAT)?;
        self.file.sync()?;
        m.h.incompatible_features = feat;
        *d = on;
        Ok(())
    }

    pub(super) fn before_slow_write(&self) -> Result<()> {
        if self.header.lazy_refcounts() && !self.is_dirty() {
            self.set_dirty_bit(true)?;
        }
        Ok(())
    }

    pub(super) fn check_writable(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Qcow2Error::ReadOnly);
        }
        if self.header.backing_file.is_some() && self.backing.is_none() {
            // Copy-on-write would copy zeroes instead of the backing data.
            return Err(Qcow2Error::InvalidOption(
                "an image opened with BackingMode::Ignore takes no guest writes".into(),
            ));
        }
        check_range(offset, len, self.size)?;
        Ok(())
    }
}
