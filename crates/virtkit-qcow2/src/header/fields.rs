//! The header's fields and feature bits, the limits applied to them, and
//! the sizes derived from them.

use crate::bounds::table_bytes;
use crate::error::Result;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Incompatible feature: the image was not closed cleanly (refcounts may be stale).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: the image is known to be corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: the compression type field is used.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Largest L1 table accepted (as QEMU): 32 MiB.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (as QEMU): 8 MiB.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest number of internal snapshots (as QEMU).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Longest backing file name.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Header extension: external data file.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Byte offsets of header fields patched in place.
pub(crate) mod off {
    pub const SIZE: u64 = 24;
    pub const NB_SNAPSHOTS: u64 = 60;
    pub const REFTABLE_OFFSET: u64 = 48;
    pub const INCOMPAT: u64 = 72;
    pub const AUTOCLEAR: u64 = 88;
}

/// Compression algorithm of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (the default).
    Zlib,
    /// Zstandard.
    Zstd,
}

impl CompressionType {
    /// The name used by qemu-img.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// A header extension as found in the image.
#[derive(Debug, Clone)]
pub struct Extension {
    /// Type code.
    pub kind: u32,
    /// Payload (without padding).
    pub data: Vec<u8>,
}

/// A parsed and validated qcow2 header.
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name (0 if none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters in the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Header length in bytes (72 for v2).
    pub header_length: u32,
    /// Compression type.
    pub compression: CompressionType,
    /// Backing file name as stored.
    pub backing_file: Option<String>,
    /// Backing format from the header extension.
    pub backing_format: Option<String>,
    /// Every header extension, in order.
    pub extensions: Vec<Extension>,
}

pub(super) fn be32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_be_bytes(a)
}

pub(super) fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Whether L2 entries are extended (128 bits, 32 subclusters).
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Whether lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Bytes of the active L1 table (`l1_size` entries of 8 bytes).
    pub(crate) fn l1_bytes(&self) -> Result<u64> {
        table_bytes("L1 table", u64::from(self.l1_size), 8)
    }

    /// Bytes of the refcount table (`refcount_table_clusters` clusters).
    pub(crate) fn refcount_table_bytes(&self) -> Result<u64> {
        table_bytes(
            "refcount table",
            u64::from(self.refcount_table_clusters),
            self.cluster_size(),
        )
    }
}
