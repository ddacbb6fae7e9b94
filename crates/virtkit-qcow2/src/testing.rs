//! Fuzzing entry points (feature `test-utils`).
//!
//! `fuzz/fuzz_targets/qcow2_open_read.rs` calls [`open_read`], and an
//! ordinary test replays every committed corpus input through it, so an
//! image that once crashed the parser stays covered on stable Rust.

use std::path::Path;

use virtkit_block::BlockBackend;

use crate::check::{check_image, Repair};
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
