//! virtkit-vcpu (work in progress).
#![deny(missing_docs)]
