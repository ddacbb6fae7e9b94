//! Consistency check and refcount repair (what `qemu-img check` does).
//!
//! The check itself works on the metadata layer (`consistency`); this
//! module is its public face over an open [`Qcow2`].

use crate::error::Result;
use crate::image::Qcow2;

pub use crate::consistency::{CheckReport, Repair, MAX_CHECK_CLUSTERS};

/// Check `q` and optionally repair refcounts. The image must be writable
/// for a repair.
pub fn check_image(q: &Qcow2, repair: Repair) -> Result<CheckReport> {
    q.check(repair)
}
