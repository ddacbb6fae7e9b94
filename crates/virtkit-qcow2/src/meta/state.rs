//! The metadata state of an open image and the checks shared by the
//! L2 and refcount code.

use virtkit_block::HostFile;

use super::encoding::decode_table;
use crate::bounds::{range_end, to_usize};
use crate::cache::Cache;
use crate::error::{Qcow2Error, Result};
use crate::header::Header;

/// Mutable metadata of an open image; always used under the image's lock.
#[derive(Debug)]
pub(crate) struct Meta {
    pub h: Header,
    pub cb: u32,
    pub cs: u64,
    pub l2_entries: u64,
    /// Words per L2 entry: 1, or 2 with extended L2 entries.
    pub l2_words: u64,
    pub l1: Vec<u64>,
    pub(super) l1_dirty: Vec<usize>,
    pub l2: Cache<Vec<u64>>,
    pub(super) rb: Cache<Vec<u8>>,
    pub reftable: Vec<u64>,
    pub(super) reftable_disk_entries: usize,
    pub(super) rb_bits: u32,
    pub(super) free_hint: u64,
    pub(super) pending_frees: Vec<(u64, u64)>,
    /// While repairing: expected refcounts; allocation avoids clusters in use here.
    pub reserved: Option<Vec<u64>>,
    pub(super) compressed_cursor: u64,
    pub(super) growing: bool,
    /// Metadata ranges never handed out by the allocator (offset, end).
    pub fixed: Vec<(u64, u64)>,
    /// Guest clusters whose new data is being written outside the lock.
    pub inflight: std::collections::HashSet<u64>,
}

impl Meta {
    pub fn new(
        f: &HostFile,
        h: Header,
        l2_cache_bytes: usize,
        rb_cache_bytes: usize,
    ) -> Result<Meta> {
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        // Header::parse bounded both tables (32 MiB and 8 MiB, inside the
        // file); the arithmetic is checked all the same.
        let l1_bytes = h.l1_bytes()?;
        let mut l1buf = vec![0u8; to_usize("L1 table", l1_bytes)?];
        f.read_at(&mut l1buf, h.l1_table_offset)?;
        let l1 = decode_table(&l1buf);
        let rt_bytes = h.refcount_table_bytes()?;
        let mut rtbuf = vec![0u8; to_usize("refcount table", rt_bytes)?];
        f.read_at(&mut rtbuf, h.refcount_table_offset)?;
        let reftable = decode_table(&rtbuf);
        let rb_bits = cb + 3 - h.refcount_order;
        let l2_words = if h.extended_l2() { 2 } else { 1 };
        let l2_cap = (l2_cache_bytes as u64 / cs).clamp(4, 65536) as usize;
        let rb_cap = (rb_cache_bytes as u64 / cs).clamp(4, 65536) as usize;
        let fixed = vec![
            (0, cs),
            (
                h.l1_table_offset,
                range_end("L1 table", h.l1_table_offset, l1_bytes)?,
            ),
            (
                h.refcount_table_offset,
                range_end("refcount table", h.refcount_table_offset, rt_bytes)?,
            ),
        ];
        Ok(Meta {
            cb,
            cs,
            l2_entries: cs / (8 * l2_words),
            l2_words,
            l1,
            l1_dirty: Vec::new(),
            l2: Cache::new(l2_cap),
            rb: Cache::new(rb_cap),
            reftable_disk_entries: reftable.len(),
            reftable,
            rb_bits,
            free_hint: 1,
            pending_frees: Vec::new(),
            reserved: None,
            compressed_cursor: 0,
            growing: false,
            fixed,
            inflight: Default::default(),
            h,
        })
    }

    pub fn refcount_max(&self) -> u64 {
        if self.h.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.h.refcount_order)) - 1
        }
    }

    pub fn file_end_check(&self, f: &HostFile, what: &'static str, off: u64) -> Result<()> {
        if off == 0 || off % self.cs != 0 || off >= f.len()? {
            return Err(Qcow2Error::Corrupt(format!(
                "{what} offset {off:#x} is invalid (zero, unaligned or past the end of the file)"
            )));
        }
        Ok(())
    }

    pub(super) fn overlaps_fixed(&self, off: u64, len: u64) -> bool {
        self.fixed.iter().any(|&(s, e)| off < e && s < off + len)
    }
}
