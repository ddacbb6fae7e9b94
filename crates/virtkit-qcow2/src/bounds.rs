//! Checked arithmetic for offsets and sizes read from an image file: every
//! value the file controls goes through one of these before it is used as
//! an offset, a length or a buffer size, so a hostile image yields an error
//! naming the bad field instead of an overflow.

use crate::error::{Qcow2Error, Result};

/// `offset + len`, or an error naming `what` when it overflows 64 bits.
pub(crate) fn range_end(what: &'static str, offset: u64, len: u64) -> Result<u64> {
    offset.checked_add(len).ok_or(Qcow2Error::BadOffset {
        what,
        offset,
        why: "offset plus size overflows 64 bits",
    })
}

/// Bytes of a table of `entries` entries of `entry_size` bytes.
pub(crate) fn table_bytes(what: &'static str, entries: u64, entry_size: u64) -> Result<u64> {
    entries.checked_mul(entry_size).ok_or_else(|| {
        Qcow2Error::TooLarge(format!(
            "{what}: {entries} entries of {entry_size} bytes overflow 64 bits"
        ))
    })
}

/// `v` as a buffer length or index.
pub(crate) fn to_usize(what: &'static str, v: u64) -> Result<usize> {
    usize::try_from(v)
        .map_err(|_| Qcow2Error::TooLarge(format!("{what} of {v} bytes does not fit in memory")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflows_are_errors() {
        assert_eq!(range_end("x", 1, 2).unwrap(), 3);
        let e = range_end("L1 table", u64::MAX, 1).unwrap_err();
        assert!(e.to_string().contains("L1 table offset"), "{e}");
        assert_eq!(table_bytes("x", 3, 8).unwrap(), 24);
        assert!(table_bytes("x", u64::MAX, 8).is_err());
        assert_eq!(to_usize("x", 7).unwrap(), 7);
    }
}
