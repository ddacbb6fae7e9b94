//! qcow2 disk images (versions 2 and 3) behind the [`virtkit_block::BlockBackend`]
//! trait, plus the logic of a qemu-img-like tool: create, check/repair, map,
//! convert.
//!
//! - Cluster sizes from 512 B to 2 MiB, refcount widths from 1 to 64 bits.
//! - Backing chains of qcow2 and raw files, opt-in ([`BackingMode::Follow`]),
//!   relative names resolved against the image's folder, loops refused.
//! - zlib and zstd compressed clusters, zero clusters, discard, write-zeroes.
//! - Crash-safe metadata order; refcounts rebuilt when the dirty bit is set.
//! - Bounded L2 and refcount-block caches.
//! - Internal snapshots: list, create, apply, delete ([`snapshot`]).
//!
//! ```
//! use virtkit_block::BlockBackend;
//! use virtkit_qcow2::{create, CreateOptions, OpenOptions, Qcow2};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.qcow2");
//! create(&path, &CreateOptions { size: 16 << 20, ..Default::default() }).unwrap();
//! let disk = Qcow2::open(&path, OpenOptions::default()).unwrap();
//! disk.write_at(b"hello", 1 << 20).unwrap();
//! disk.flush().unwrap();
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 1 << 20).unwrap();
//! assert_eq!(&buf, b"hello");
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::Path;
use std::sync::Arc;

use virtkit_block::{BlockBackend, RawBackend, RawOptions};

mod bounds;
mod cache;
pub mod check;
mod compress;
mod consistency;
pub mod convert;
pub mod create;
pub mod error;
mod format;
pub mod header;
mod image;
pub mod map;
mod meta;
pub mod snapshot;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use check::{check_image, CheckReport, Repair};
pub use convert::{convert, ConvertOptions};
pub use create::{create, Compat, CreateOptions};
pub use error::Qcow2Error;
pub use format::ImageFormat;
pub use header::{CompressionType, Header};
pub use image::{BackingMode, OpenOptions, Qcow2};
pub use map::MapEntry;
pub use snapshot::Snapshot;

/// Open `path` as a disk of the given format (never probed). `read_only`,
/// `direct` and, for qcow2, the other options apply.
pub fn open_image(
    path: impl AsRef<Path>,
    format: ImageFormat,
    opts: &OpenOptions,
) -> Result<Arc<dyn BlockBackend>, Qcow2Error> {
    Ok(match format {
        ImageFormat::Raw => Arc::new(RawBackend::open(
            path,
            RawOptions {
                read_only: opts.read_only,
                direct: opts.direct,
            },
        )?),
        ImageFormat::Qcow2 => Arc::new(Qcow2::open(path, opts.clone())?),
    })
}
