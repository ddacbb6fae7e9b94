//! virtkit-net (work in progress).
#![deny(missing_docs)]
