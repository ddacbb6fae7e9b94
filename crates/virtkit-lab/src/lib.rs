//! virtkit-lab (work in progress).
#![deny(missing_docs)]
