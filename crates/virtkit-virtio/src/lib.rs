//! virtkit-virtio (work in progress).
#![deny(missing_docs)]
