//! The qcow2 header: parsing, validation and the field offsets used to patch
//! it in place (so header extensions are never rewritten).

use crate::bounds::{range_end, table_bytes};
use crate::error::{Qcow2Error, Result};

mod ext;

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

fn be32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

fn bad(what: &'static str, offset: u64, why: &'static str) -> Qcow2Error {
    Qcow2Error::BadOffset { what, offset, why }
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

    /// Parse and validate a header. `buf` holds the first cluster of the
    /// file (or the whole file if shorter, at least 72 bytes); `file_len` is
    /// the length of the file.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        if buf.len() < 72 {
            return Err(Qcow2Error::Truncated(buf.len() as u64));
        }
        if be32(buf, 0) != MAGIC {
            return Err(Qcow2Error::NotQcow2);
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::InvalidClusterBits(cluster_bits));
        }
        let cs = 1u64 << cluster_bits;
        let crypt = be32(buf, 32);
        if crypt != 0 {
            return Err(Qcow2Error::Encrypted(crypt));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            extensions: Vec::new(),
        };
        if version == 3 {
            if buf.len() < 104 {
                return Err(Qcow2Error::Truncated(buf.len() as u64));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104
                || h.header_length % 8 != 0
                || u64::from(h.header_length) > cs
                || u64::from(h.header_length) > buf.len() as u64
            {
                return Err(Qcow2Error::InvalidHeaderLength(h.header_length));
            }
            if h.refcount_order > 6 {
                return Err(Qcow2Error::InvalidRefcountOrder(h.refcount_order));
            }
            if h.header_length > 104 {
                h.compression = match buf[104] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    t => return Err(Qcow2Error::InvalidCompressionType(t)),
                };
            }
            if (h.compression == CompressionType::Zstd)
                != (h.incompatible_features & INCOMPAT_COMPRESSION != 0)
            {
                return Err(Qcow2Error::Corrupt(
                    "compression type and its incompatible feature bit disagree".into(),
                ));
            }
        }
        // The backing name's place bounds the extension area: check it first.
        h.backing_name_range(buf)?;
        h.parse_extensions(buf)?;
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        let unknown = h.incompatible_features & !known;
        if unknown != 0 {
            return Err(Qcow2Error::UnknownIncompatibleFeatures {
                bits: unknown,
                names: h.feature_names(0, unknown),
            });
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::UnsupportedFeature("external data file"));
        }
        if h.extended_l2() && h.cluster_bits < 14 {
            return Err(Qcow2Error::Corrupt(
                "extended L2 entries need clusters of at least 16 KiB".into(),
            ));
        }
        h.parse_backing_name(buf)?;
        h.validate_tables(file_len)?;
        Ok(h)
    }

    fn validate_tables(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let align = |what, o: u64| -> Result<()> {
            if o % cs != 0 {
                return Err(bad(what, o, "not cluster aligned"));
            }
            Ok(())
        };
        let inside = |what, o: u64, len: u64| -> Result<u64> {
            let end = range_end(what, o, len)?;
            if end > file_len {
                return Err(bad(what, o, "table extends past the end of the file"));
            }
            Ok(end)
        };
        // L1.
        let l2_entries = cs / if self.extended_l2() { 16 } else { 8 };
        let per_l1 = cs
            .checked_mul(l2_entries)
            .ok_or_else(|| Qcow2Error::TooLarge("cluster size".into()))?;
        let needed = self.size.div_ceil(per_l1);
        let l1_bytes = self.l1_bytes()?;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::TableTooLarge {
                what: "L1 table",
                size: l1_bytes,
                limit: MAX_L1_BYTES,
            });
        }
        if u64::from(self.l1_size) < needed {
            return Err(Qcow2Error::L1TooSmall {
                l1_size: self.l1_size,
                size: self.size,
            });
        }
        if self.size > (1u64 << 62) {
            return Err(Qcow2Error::TooLarge(format!(
                "virtual size {} too large",
                self.size
            )));
        }
        let mut ranges: Vec<(&'static str, u64, u64)> = vec![("header", 0, cs)];
        if self.l1_size > 0 {
            align("L1 table", self.l1_table_offset)?;
            let end = inside("L1 table", self.l1_table_offset, l1_bytes)?;
            ranges.push(("L1 table", self.l1_table_offset, end));
        }
        // Refcount table.
        let rt_bytes = self.refcount_table_bytes()?;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::TableTooLarge {
                what: "refcount table",
                size: rt_bytes,
                limit: MAX_REFTABLE_BYTES,
            });
        }
        if rt_bytes == 0 {
            return Err(bad(
                "refcount table",
                self.refcount_table_offset,
                "table is empty",
            ));
        }
        align("refcount table", self.refcount_table_offset)?;
        let end = inside("refcount table", self.refcount_table_offset, rt_bytes)?;
        ranges.push(("refcount table", self.refcount_table_offset, end));
        // Snapshot table (its exact size is checked when it is parsed).
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Qcow2Error::BadSnapshot(format!(
                "{} snapshots (limit {MAX_SNAPSHOTS})",
                self.nb_snapshots
            )));
        }
        if self.nb_snapshots > 0 {
            align("snapshot table", self.snapshots_offset)?;
            let end = inside("snapshot table", self.snapshots_offset, 40)?;
            ranges.push(("snapshot table", self.snapshots_offset, end));
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.1 < b.2 && b.1 < a.2 {
                    return Err(Qcow2Error::Overlap(b.0, a.0));
                }
            }
        }
        Ok(())
    }
}

/// Build the first cluster of a new image.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_header(
    cluster_size: u64,
    version: u32,
    size: u64,
    cluster_bits: u32,
    l1_size: u32,
    l1_offset: u64,
    rt_offset: u64,
    rt_clusters: u32,
    refcount_order: u32,
    lazy: bool,
    compression: CompressionType,
    backing: Option<(&str, &str)>,
) -> Result<Vec<u8>> {
    let mut b = vec![0u8; cluster_size as usize];
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_be_bytes());
    put32(&mut b, 0, MAGIC);
    put32(&mut b, 4, version);
    put32(&mut b, 20, cluster_bits);
    put64(&mut b, 24, size);
    put32(&mut b, 36, l1_size);
    put64(&mut b, 40, l1_offset);
    put64(&mut b, 48, rt_offset);
    put32(&mut b, 56, rt_clusters);
    let mut pos = 72usize;
    if version == 3 {
        let incompat = if compression == CompressionType::Zstd {
            INCOMPAT_COMPRESSION
        } else {
            0
        };
        put64(&mut b, 72, incompat);
        put64(&mut b, 80, if lazy { COMPAT_LAZY_REFCOUNTS } else { 0 });
        put32(&mut b, 96, refcount_order);
        put32(&mut b, 100, 112);
        b[104] = if compression == CompressionType::Zstd {
            1
        } else {
            0
        };
        pos = 112;
    }
    let too_big =
        || Qcow2Error::InvalidOption("backing file name does not fit in the header".into());
    if let Some((name, fmt)) = backing {
        if name.len() > MAX_BACKING_NAME as usize {
            return Err(Qcow2Error::BadBackingName(format!(
                "{} bytes (limit {MAX_BACKING_NAME})",
                name.len()
            )));
        }
        let padded = fmt.len().div_ceil(8) * 8;
        if pos + 8 + padded + 8 + name.len() > b.len() {
            return Err(too_big());
        }
        put32(&mut b, pos, EXT_BACKING_FORMAT);
        put32(&mut b, pos + 4, fmt.len() as u32);
        b[pos + 8..pos + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
        pos += 8 + padded;
        // End-of-extensions marker (already zero), then the name.
        pos += 8;
        b[pos..pos + name.len()].copy_from_slice(name.as_bytes());
        put64(&mut b, 8, pos as u64);
        put32(&mut b, 16, name.len() as u32);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<u8> {
        build_header(
            65536,
            3,
            1 << 30,
            16,
            2,
            3 * 65536,
            65536,
            1,
            4,
            false,
            CompressionType::Zlib,
            Some(("base.raw", "raw")),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let b = base();
        let h = Header::parse(&b, 4 * 65536).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.backing_file.as_deref(), Some("base.raw"));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        assert_eq!(h.refcount_bits(), 16);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut b = base();
        b[20..24].copy_from_slice(&8u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, 1 << 20),
            Err(Qcow2Error::InvalidClusterBits(8))
        ));
        let mut b = base();
        b[96..100].copy_from_slice(&7u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, 1 << 20),
            Err(Qcow2Error::InvalidRefcountOrder(7))
        ));
        let mut b = base();
        b[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(
            Header::parse(&b, 1 << 20),
            Err(Qcow2Error::UnknownIncompatibleFeatures { .. })
        ));
        let mut b = base();
        b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, 1 << 20),
            Err(Qcow2Error::TableTooLarge { .. })
        ));
        let b = base();
        assert!(matches!(
            Header::parse(&b, 2 * 65536),
            Err(Qcow2Error::BadOffset { .. })
        ));
        let mut b = base();
        b[40..48].copy_from_slice(&65536u64.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, 1 << 20),
            Err(Qcow2Error::Overlap(..))
        ));
        assert!(matches!(
            Header::parse(&[0u8; 100], 100),
            Err(Qcow2Error::NotQcow2)
        ));
    }
}
