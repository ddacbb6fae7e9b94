//! virtkit-qcow2 (work in progress).
#![deny(missing_docs)]
