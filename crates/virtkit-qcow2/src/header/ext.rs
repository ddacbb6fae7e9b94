//! The rest of the first cluster after the fixed header fields: header
//! extensions, the feature name table and the backing file name. Every
//! offset and length here comes from the file and is checked against the
//! first cluster (and the bytes actually read) before it is used.

use super::fields::{
    be32, Extension, Header, EXT_BACKING_FORMAT, EXT_FEATURE_NAMES, MAX_BACKING_NAME,
};
use crate::bounds::{range_end, to_usize};
use crate::error::{Qcow2Error, Result};

/// Most header extensions accepted.
const MAX_EXTENSIONS: usize = 1024;

impl Header {
    /// Bytes of the first cluster that `buf` holds.
    fn first_cluster_len(&self, buf: &[u8]) -> u64 {
        (buf.len() as u64).min(self.cluster_size())
    }

    /// Where the backing file name lies (`start..end`), checked: inside the
    /// first cluster, after the fixed header, at most 1023 bytes. `None`
    /// without a backing file.
    pub(super) fn backing_name_range(&self, buf: &[u8]) -> Result<Option<(u64, u64)>> {
        let start = self.backing_file_offset;
        if start == 0 {
            return Ok(None);
        }
        if self.backing_file_size > MAX_BACKING_NAME {
            return Err(Qcow2Error::BadBackingName(format!(
                "backing file size {} exceeds the limit of {MAX_BACKING_NAME} bytes",
                self.backing_file_size
            )));
        }
        let bad = |why| Qcow2Error::BadOffset {
            what: "backing file",
            offset: start,
            why,
        };
        let end = range_end("backing file", start, u64::from(self.backing_file_size))?;
        if start < u64::from(self.header_length) {
            return Err(bad("the name would overlap the header"));
        }
        if end > self.first_cluster_len(buf) {
            return Err(bad(
                "the name runs past the first cluster or the end of the file",
            ));
        }
        Ok(Some((start, end)))
    }

    /// Read the header extensions. As in QEMU, their area ends where the
    /// backing file name starts, or else at the end of the first cluster.
    pub(super) fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let mut limit = self.first_cluster_len(buf);
        if let Some((start, _)) = self.backing_name_range(buf)? {
            limit = limit.min(start);
        }
        let mut pos = u64::from(self.header_length);
        loop {
            let Some(data_start) = pos.checked_add(8).filter(|&e| e <= limit) else {
                // A v2 header may end without an end marker if nothing follows.
                if self.version == 2 && pos >= limit {
                    return Ok(());
                }
                return Err(Qcow2Error::BadExtension(format!(
                    "no end-of-extensions marker before offset {limit:#x} \
                     (the end of the extension area)"
                )));
            };
            // pos + 8 <= limit <= buf.len(): the two words are inside buf.
            let p = to_usize("header extension offset", pos)?;
            let kind = be32(buf, p);
            let len = be32(buf, p + 4);
            if kind == 0 {
                return Ok(());
            }
            let too_long = || {
                Qcow2Error::BadExtension(format!(
                    "extension {kind:#x} at offset {pos:#x}: length {len} runs past \
                     the end of the extension area ({limit:#x})"
                ))
            };
            let next = u64::from(len)
                .checked_next_multiple_of(8)
                .and_then(|padded| data_start.checked_add(padded))
                .filter(|&e| e <= limit)
                .ok_or_else(too_long)?;
            let ds = to_usize("header extension offset", data_start)?;
            let dl = to_usize("header extension length", u64::from(len))?;
            let data = buf
                .get(ds..)
                .and_then(|b| b.get(..dl))
                .ok_or_else(too_long)?
                .to_vec();
            if kind == EXT_BACKING_FORMAT {
                let s = String::from_utf8(data.clone())
                    .map_err(|_| Qcow2Error::BadExtension("backing format is not UTF-8".into()))?;
                self.backing_format = Some(s);
            }
            self.extensions.push(Extension { kind, data });
            pos = next;
            if self.extensions.len() > MAX_EXTENSIONS {
                return Err(Qcow2Error::BadExtension(format!(
                    "more than {MAX_EXTENSIONS} extensions"
                )));
            }
        }
    }

    /// Names of feature bits `bits` of type `kind` (0 incompatible) from the
    /// feature name table, formatted for an error message.
    pub(super) fn feature_names(&self, kind: u8, bits: u64) -> String {
        let mut names = Vec::new();
        for e in self
            .extensions
            .iter()
            .filter(|e| e.kind == EXT_FEATURE_NAMES)
        {
            for ent in e.data.chunks_exact(48) {
                let bit = 1u64.checked_shl(u32::from(ent[1])).unwrap_or(0);
                if ent[0] == kind && bits & bit != 0 {
                    let n = &ent[2..];
                    let end = n.iter().position(|&c| c == 0).unwrap_or(n.len());
                    names.push(String::from_utf8_lossy(&n[..end]).into_owned());
                }
            }
        }
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    }

    /// Read the backing file name from where [`Header::backing_name_range`] says.
    pub(super) fn parse_backing_name(&mut self, buf: &[u8]) -> Result<()> {
        let Some((start, end)) = self.backing_name_range(buf)? else {
            return Ok(());
        };
        let s = to_usize("backing file offset", start)?;
        let e = to_usize("backing file offset", end)?;
        let bytes = buf.get(s..e).ok_or(Qcow2Error::BadOffset {
            what: "backing file",
            offset: start,
            why: "the name runs past the first cluster or the end of the file",
        })?;
        let name = String::from_utf8(bytes.to_vec())
            .map_err(|_| Qcow2Error::BadBackingName("not UTF-8".into()))?;
        if name.is_empty() || name.contains('\0') {
            return Err(Qcow2Error::BadBackingName("empty or contains NUL".into()));
        }
        self.backing_file = Some(name);
        Ok(())
    }
}
