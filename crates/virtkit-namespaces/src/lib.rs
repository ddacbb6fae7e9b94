//! virtkit-namespaces (work in progress).
#![deny(missing_docs)]
