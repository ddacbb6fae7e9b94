//! The qcow2 block backend.
//!
//! Layout (each file uses only those before it): `qcow2` (the [`Qcow2`]
//! type, options, shared state) <- `open` and `read` <- `write` <-
//! `discard` and `compressed` <- `backend` (flush, close, [`BlockBackend`]).
//! This file only re-exports.
//!
//! [`BlockBackend`]: virtkit_block::BlockBackend

mod backend;
mod compressed;
mod discard;
mod open;
mod qcow2;
mod read;
mod write;

pub(crate) use qcow2::Backing;
pub use qcow2::{BackingMode, OpenOptions, Qcow2};
