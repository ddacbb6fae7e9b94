//! virtkit-memory (work in progress).
#![deny(missing_docs)]
