//! Container images for virtkit: a content-addressed store of blobs and unpacked layers,
//! and OCI layer unpacking that never writes outside its directory.
//!
//! - [`Digest`]: `sha256:<hex>`, parsed strictly; [`digest::HashingReader`] hashes,
//!   counts and caps what passes through it.
//! - [`Store`]: blobs under `blobs/sha256/`, each verified against its digest when it is
//!   written (a temporary file renamed into place, so concurrent writers of one blob are
//!   safe) and again when it is read; layers unpacked once under `layers/sha256/`, made in
//!   a temporary directory and renamed, so a failed unpack leaves nothing; pruning.
//! - [`unpack::unpack`]: a layer (tar, gzip or zstd) into a directory: `..` refused,
//!   absolute names and symbolic links kept inside (`openat2(RESOLVE_IN_ROOT)` for every
//!   parent, `*at` calls that never follow the last component), hard links only to files
//!   of the layer, owners, modes, times, `user.*` and `security.capability` xattrs, device
//!   nodes; OCI whiteouts as overlayfs whiteouts or applied.
//! - [`layout`]: OCI image layouts and docker-archive tarballs imported into the store,
//!   every blob verified; image names in `refs.json` ([`Store::tag`], [`Store::images`]).
//! - [`Store::create_bundle`]: an OCI runtime bundle for a container of a stored image:
//!   an overlayfs root over its layers and the merged `config.json`.
//! - `Store::pull` (`registry`, default feature `registry`): an image from an OCI distribution registry (tags,
//!   digests, indexes, OCI and Docker manifests), every blob verified and resumable.
//! - `Store::push` (`registry`): a stored image to a registry, blobs the registry has
//!   already skipped.
//! - [`export`]: a stored image written as an OCI image layout or a docker-archive.
//! - [`diff`]: an overlayfs upper directory (or any tree) made into a layer, whiteouts
//!   and opaque directories as OCI's; [`Store::commit`] puts one on top of an image.
//! - [`mod@build`]: a Dockerfile parsed and built, `RUN` steps through a [`StepRunner`].
//! - [`config::runtime_spec`]: an image config and `docker run`'s flags made into an OCI
//!   runtime spec (Entrypoint/Cmd, Env, WorkingDir, User resolved in the image's own
//!   `/etc/passwd`, StopSignal, ExposedPorts and Volumes as annotations).
//!
//! ```
//! use virtkit_image::{Digest, Store};
//!
//! # fn main() -> Result<(), virtkit_image::ImageError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path())?;
//! let config = br#"{"architecture":"amd64","os":"linux"}"#;
//! let digest = Digest::of(config);
//! store.put_blob(&config[..], &digest)?;
//! assert_eq!(store.read_blob(&digest)?, config);
//! // The same bytes under another digest are refused, and nothing is kept.
//! let wrong = Digest::of(b"something else");
//! assert!(store.put_blob(&config[..], &wrong).is_err());
//! assert!(!store.has_blob(&wrong));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
pub mod bundle;
pub mod commit;
pub mod config;
pub mod diff;
pub mod digest;
mod error;
pub mod export;
mod fsops;
pub mod layout;
#[cfg(feature = "registry")]
pub mod push;
mod refs;
#[cfg(feature = "registry")]
pub mod registry;
mod store;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod unpack;

pub use build::{build, BuildOptions, StepRunner};
pub use commit::CommitChanges;
pub use config::{runtime_spec, Bind, RunOptions};
pub use diff::NewLayer;
pub use digest::Digest;
pub use error::ImageError;
pub use store::{BlobWriter, Store};
pub use unpack::{UnpackOptions, UnpackStats, Whiteouts};
