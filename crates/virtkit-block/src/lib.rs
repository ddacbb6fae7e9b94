//! A small block-device trait, written for the code that consumes disks
//! (virtio-blk), plus the backends that implement it.
//!
//! Every operation takes `&self`, so one backend can be shared by several
//! threads behind an `Arc`; backends do their own locking.
//!
//! ```
//! # #[cfg(feature = "test-utils")] {
//! use virtkit_block::{BlockBackend, mem::MemBackend};
//! let disk = MemBackend::new(4096);
//! disk.write_at(b"hello", 512).unwrap();
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 512).unwrap();
//! assert_eq!(&buf, b"hello");
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fmt::Debug;

use vm_memory::VolatileSlice;

#[cfg(any(test, feature = "test-utils"))]
pub mod mem;
pub mod raw;

pub use raw::{HostFile, RawBackend, RawError, RawOptions};

/// Errors returned by block backends.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request reaches past the end of the device.
    #[error("request at offset {offset} of {len} bytes is outside the device ({size} bytes)")]
    OutOfRange {
        /// Offset of the request in bytes.
        offset: u64,
        /// Length of the request in bytes.
        len: u64,
        /// Size of the device in bytes.
        size: u64,
    },
    /// A write-type request on a read-only device.
    #[error("the device is read-only")]
    ReadOnly,
    /// The backend does not implement this operation.
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    /// An I/O error from the host.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The image format found an inconsistency (for example a corrupt table).
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    /// Any other backend-specific failure.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// A block device: a byte-addressed, fixed-size store.
///
/// Implementations must be safe to call from several threads at once.
/// A request that reaches past [`BlockBackend::size`] fails with
/// [`BlockError::OutOfRange`]; write-type requests on a read-only device fail
/// with [`BlockError::ReadOnly`].
pub trait BlockBackend: Send + Sync + Debug {
    /// Fill `buf` from the device starting at byte `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Write all of `buf` to the device starting at byte `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Make every acknowledged write durable.
    fn flush(&self) -> Result<(), BlockError>;
    /// Tell the backend that a range is no longer needed. Reads of a
    /// discarded range return either the old data or zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Make a range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Size of the device in bytes.
    fn size(&self) -> u64;
    /// Whether write-type requests are refused.
    fn is_read_only(&self) -> bool;

    /// Fill the memory behind `buf` (guest memory, for a VMM) from the device at
    /// `offset`. The default goes through a bounce buffer; backends that can read
    /// straight into memory (the raw file) override it to save that copy.
    fn read_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<(), BlockError> {
        let mut tmp = vec![0u8; buf.len()];
        self.read_at(&mut tmp, offset)?;
        buf.copy_from(&tmp);
        Ok(())
    }

    /// Write the memory behind `buf` to the device at `offset`; the counterpart of
    /// [`BlockBackend::read_volatile_at`].
    fn write_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<(), BlockError> {
        let mut tmp = vec![0u8; buf.len()];
        buf.copy_to(&mut tmp[..]);
        self.write_at(&tmp, offset)
    }
}

/// Check that `offset..offset+len` lies inside a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

impl<T: BlockBackend + ?Sized> BlockBackend for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<(), BlockError> {
        (**self).flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        (**self).write_zeroes(offset, len)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn read_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<(), BlockError> {
        (**self).read_volatile_at(buf, offset)
    }
    fn write_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<(), BlockError> {
        (**self).write_volatile_at(buf, offset)
    }
}
