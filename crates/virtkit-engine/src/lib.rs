//! Containers from images (placeholder while the crate is written).
#![deny(missing_docs)]
