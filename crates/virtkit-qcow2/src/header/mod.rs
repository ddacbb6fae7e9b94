//! The qcow2 header: parsing, validation and the field offsets used to patch
//! it in place (so header extensions are never rewritten).
//!
//! Layout: `fields` (the [`Header`] struct, constants, derived sizes) <-
//! `ext` (extensions, feature names, backing name) <- `parse`; `build`
//! writes a new header from `fields`. This file only re-exports.

mod build;
mod ext;
mod fields;
mod parse;
#[cfg(test)]
mod tests;

pub(crate) use build::build_header;
pub(crate) use fields::off;
pub use fields::{
    CompressionType, Extension, Header, COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, EXT_DATA_FILE,
    EXT_FEATURE_NAMES, INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY,
    INCOMPAT_EXTL2, MAGIC, MAX_BACKING_NAME, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS,
};
