//! Fuzzing entry points (feature `test-utils`).
//!
//! `fuzz/fuzz_targets/qcow2_open_read.rs` calls [`open_read`] and
//! `fuzz/fuzz_targets/qcow2_check.rs` calls [`check_repair`], and ordinary
//! tests replay every committed corpus input through them, so an image that
//! once crashed the parser stays covered on stable Rust.

use std::path::Path;

use virtkit_block::BlockBackend;

use crate::check::{check_image, CheckReport, Repair};
use crate::error::Qcow2Error;
use crate::image::{BackingMode, OpenOptions, Qcow2};

/// Write `data` to `path` as an image file, then open it read-only (backing
/// files ignored), read at its start, middle and end, map it and check it.
/// Returns the error that refused the image, if any; it must never panic,
/// hang or allocate without bound.
pub fn open_read(path: &Path, data: &[u8]) -> Option<Qcow2Error> {
    if let Err(e) = std::fs::write(path, data) {
        return Some(Qcow2Error::Io(e));
    }
    let opts = OpenOptions {
        read_only: true,
        backing: BackingMode::Ignore,
        l2_cache_bytes: 1 << 20,
        refcount_cache_bytes: 1 << 20,
        ..Default::default()
    };
    let q = match Qcow2::open(path, opts) {
        Ok(q) => q,
        Err(e) => return Some(e),
    };
    let size = q.size();
    let mut buf = vec![0u8; 65536];
    for off in [0, size / 3, size.saturating_sub(65536)] {
        let n = usize::try_from((size - off.min(size)).min(buf.len() as u64)).unwrap_or(0);
        let _ = q.read_at(&mut buf[..n], off);
    }
    if size <= 64 << 20 {
        let _ = q.map();
    }
    let _ = check_image(&q, Repair::None);
    None
}

/// What [`check_repair`] found: the reports of the check before, during and after the
/// repair (each `None` when that check failed with an error).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckRun {
    /// `check_image(Repair::None)` on the image as given.
    pub before: Option<CheckReport>,
    /// `check_image(Repair::All)`.
    pub repair: Option<CheckReport>,
    /// `check_image(Repair::None)` after the repair.
    pub after: Option<CheckReport>,
}

/// What `virtkit-img check`, `check -r all`, `info` and `map` do to an image file: write
/// `data` to `path`, open it read-write (backing files ignored, no dirty-bit rebuild),
/// check it, repair everything, check again, map it, close it; then open it read-only
/// (as `info`) and read its start, and read-write again with the dirty-bit rebuild (as a
/// VM opening the disk). Returns the error that refused the image, if any, and the
/// reports; it must never panic, hang or allocate without bound.
pub fn check_repair(path: &Path, data: &[u8]) -> (Option<Qcow2Error>, CheckRun) {
    let mut run = CheckRun::default();
    if let Err(e) = std::fs::write(path, data) {
        return (Some(Qcow2Error::Io(e)), run);
    }
    let opts = |read_only, repair_dirty| OpenOptions {
        read_only,
        backing: BackingMode::Ignore,
        l2_cache_bytes: 1 << 20,
        refcount_cache_bytes: 1 << 20,
        repair_dirty,
        ..Default::default()
    };
    let q = match Qcow2::open(path, opts(false, false)) {
        Ok(q) => q,
        Err(e) => return (Some(e), run),
    };
    run.before = check_image(&q, Repair::None).ok();
    run.repair = check_image(&q, Repair::All).ok();
    run.after = check_image(&q, Repair::None).ok();
    if q.size() <= 64 << 20 {
        let _ = q.map();
    }
    let _ = q.close();
    if let Ok(q) = Qcow2::open(path, opts(true, false)) {
        let _ = (q.header(), q.snapshots(), q.backing_path(), q.is_dirty());
        let mut buf = vec![0u8; 4096];
        let n = usize::try_from(q.size().min(4096)).unwrap_or(0);
        let _ = q.read_at(&mut buf[..n], 0);
    }
    if let Ok(q) = Qcow2::open(path, opts(false, true)) {
        let _ = q.close();
    }
    (None, run)
}
