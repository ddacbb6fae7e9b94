//! The error type of this crate.

use virtkit_block::BlockError;

/// Errors from opening, creating, checking or accessing qcow2 images.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// An I/O error from the host.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The image file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with the qcow2 magic.
    #[error("not a qcow2 image (bad magic)")]
    NotQcow2,
    /// The file is shorter than a qcow2 header.
    #[error("file too short for a qcow2 header ({0} bytes)")]
    Truncated(u64),
    /// A version other than 2 or 3.
    #[error("unsupported qcow2 version {0} (only 2 and 3)")]
    UnsupportedVersion(u32),
    /// cluster_bits outside 9..=21.
    #[error("invalid cluster_bits {0} (must be 9..=21, i.e. 512 B to 2 MiB)")]
    InvalidClusterBits(u32),
    /// refcount_order above 6.
    #[error("invalid refcount_order {0} (must be 0..=6, i.e. 1 to 64 bits)")]
    InvalidRefcountOrder(u32),
    /// header_length not valid for version 3.
    #[error(
        "invalid header_length {0} (a v3 header is at least 104 bytes, a multiple of 8, \
         and lies inside the first cluster and the file)"
    )]
    InvalidHeaderLength(u32),
    /// The image is encrypted.
    #[error("encrypted images are not supported (crypt_method {0})")]
    Encrypted(u32),
    /// Incompatible feature bits this implementation does not know.
    #[error("unknown incompatible feature bits {bits:#x}{names}")]
    UnknownIncompatibleFeatures {
        /// The unknown bits.
        bits: u64,
        /// Names from the image's feature name table, if any (formatted).
        names: String,
    },
    /// A known feature this implementation does not support.
    #[error("unsupported qcow2 feature: {0}")]
    UnsupportedFeature(&'static str),
    /// A compression type other than zlib (0) or zstd (1).
    #[error("invalid compression type {0}")]
    InvalidCompressionType(u8),
    /// A table would exceed the sanity limit.
    #[error("{what} too large ({size} bytes, limit {limit})")]
    TableTooLarge {
        /// Which table.
        what: &'static str,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// An offset that is unaligned or past the end of the file.
    #[error("{what} offset {offset:#x} is invalid ({why})")]
    BadOffset {
        /// What the offset points at.
        what: &'static str,
        /// The offset.
        offset: u64,
        /// Why it is invalid.
        why: &'static str,
    },
    /// Two metadata structures overlap.
    #[error("{0} overlaps {1}")]
    Overlap(&'static str, &'static str),
    /// The L1 table cannot map the whole virtual size.
    #[error("L1 table of {l1_size} entries too small for virtual size {size}")]
    L1TooSmall {
        /// Entries in the L1 table.
        l1_size: u32,
        /// Virtual size.
        size: u64,
    },
    /// A malformed header extension.
    #[error("malformed header extension: {0}")]
    BadExtension(String),
    /// The backing file name is longer than 1023 bytes or not valid.
    #[error("invalid backing file name: {0}")]
    BadBackingName(String),
    /// The image has a backing file but the caller did not allow backing files.
    #[error("image has backing file {0:?} but backing files were not allowed")]
    BackingNotAllowed(String),
    /// The image names a backing file without naming its format.
    #[error("backing file {0:?} has no recorded format (we never probe); recreate with -F")]
    BackingFormatMissing(String),
    /// A backing format other than qcow2 or raw.
    #[error("unsupported backing format {0:?}")]
    BackingFormatUnsupported(String),
    /// The backing chain refers back to one of its own images.
    #[error("backing chain loop: {0} appears twice")]
    BackingLoop(String),
    /// The backing chain is longer than the configured limit.
    #[error("backing chain deeper than {0}")]
    BackingTooDeep(usize),
    /// Opening a backing file failed.
    #[error("backing file {name}: {source}")]
    Backing {
        /// Backing file path.
        name: String,
        /// Why it failed.
        source: Box<Qcow2Error>,
    },
    /// The snapshot table is malformed.
    #[error("malformed snapshot table: {0}")]
    BadSnapshot(String),
    /// A snapshot with this name already exists.
    #[error("a snapshot named {0:?} already exists")]
    SnapshotExists(String),
    /// No snapshot has this id or name.
    #[error("no snapshot with id or name {0:?}")]
    SnapshotNotFound(String),
    /// A snapshot name that cannot be stored.
    #[error("invalid snapshot name: {0}")]
    BadSnapshotName(String),
    /// The image must be repaired before its snapshots can change.
    #[error("{0}: repair it first (virtkit-img check -r all, or qemu-img check -r all)")]
    NeedsRepair(&'static str),
    /// An inconsistency found while reading metadata.
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    /// The image is too large for its cluster size or format limits.
    #[error("{0}")]
    TooLarge(String),
    /// A write-type operation on a read-only image.
    #[error("the image is read-only")]
    ReadOnly,
    /// An invalid creation or conversion option.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// An error from a block backend (backing file, source of a conversion).
    #[error(transparent)]
    Block(#[from] BlockError),
    /// An error opening a raw file.
    #[error(transparent)]
    Raw(#[from] virtkit_block::RawError),
}

impl From<Qcow2Error> for BlockError {
    fn from(e: Qcow2Error) -> Self {
        match e {
            Qcow2Error::Io(e) => BlockError::Io(e),
            Qcow2Error::ReadOnly => BlockError::ReadOnly,
            Qcow2Error::Corrupt(s) => BlockError::Corrupt(s),
            Qcow2Error::Block(b) => b,
            other => BlockError::Backend(Box::new(other)),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Qcow2Error>;
