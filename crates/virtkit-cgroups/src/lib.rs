//! virtkit-cgroups (work in progress).
#![deny(missing_docs)]
