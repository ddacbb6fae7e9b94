//! Parsing and validating a header: the fixed fields, then (through
//! `ext`) the extensions and backing name, then the tables it points at.

use super::fields::{
    be32, be64, CompressionType, Header, INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT,
    INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2, MAGIC, MAX_L1_BYTES, MAX_REFTABLE_BYTES,
    MAX_SNAPSHOTS,
};
use crate::bounds::range_end;
use crate::error::{Qcow2Error, Result};

fn bad(what: &'static str, offset: u64, why: &'static str) -> Qcow2Error {
    Qcow2Error::BadOffset { what, offset, why }
}

impl Header {
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
