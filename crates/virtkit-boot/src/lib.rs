//! virtkit-boot (work in progress).
#![deny(missing_docs)]
