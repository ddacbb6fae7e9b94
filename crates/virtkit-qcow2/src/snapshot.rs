//! The internal snapshot table (read only: snapshots are listed and their
//! clusters protected, never created or changed).

use virtkit_block::HostFile;

use crate::bounds::{table_bytes, to_usize};
use crate::error::{Qcow2Error, Result};
use crate::header::{Header, MAX_L1_BYTES};

/// Largest snapshot table accepted (as QEMU): 64 MiB.
pub const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Unique ID string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state.
    pub vm_state_size: u64,
    /// Virtual disk size when taken (v3 extra data), if recorded.
    pub disk_size: Option<u64>,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (u64::from(be32(b, o)) << 32) | u64::from(be32(b, o + 4))
}

/// Bytes of a snapshot table entry header.
const ENTRY_HEADER: u64 = 40;

/// The sizes a snapshot table entry header gives: (id, name, extra data).
fn entry_lens(hd: &[u8; 40]) -> (u64, u64, u64) {
    (
        u64::from(be16(hd, 12)),
        u64::from(be16(hd, 14)),
        u64::from(be32(hd, 36)),
    )
}

/// Where the entry after the one at `pos` (with `body` bytes after its
/// header) starts: entries are 8-byte aligned.
fn next_entry(pos: u64, body: u64) -> Option<u64> {
    pos.checked_add(ENTRY_HEADER)?
        .checked_add(body)?
        .checked_next_multiple_of(8)
}

/// Read the snapshot table described by `h` from `f` (`file_len` bytes).
pub(crate) fn read_snapshots(f: &HostFile, h: &Header, file_len: u64) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut pos = h.snapshots_offset;
    let cs = h.cluster_size();
    for i in 0..h.nb_snapshots {
        let bad = |why: String| Qcow2Error::BadSnapshot(format!("entry {i}: {why}"));
        let past_end = || {
            bad(format!(
                "entry at offset {pos:#x} runs past the end of the file"
            ))
        };
        let body_start = pos
            .checked_add(ENTRY_HEADER)
            .filter(|&e| e <= file_len)
            .ok_or_else(past_end)?;
        let mut hd = [0u8; 40];
        f.read_at(&mut hd, pos)?;
        let l1_table_offset = be64(&hd, 0);
        let l1_size = be32(&hd, 8);
        let (id_len, name_len, extra_len) = entry_lens(&hd);
        if extra_len > 1024 {
            return Err(bad(format!("extra data size of {extra_len} bytes")));
        }
        // At most 1024 + 2 * 65535: no overflow.
        let body = extra_len + id_len + name_len;
        let next = next_entry(pos, body).ok_or_else(past_end)?;
        if next - h.snapshots_offset > MAX_SNAPSHOT_TABLE {
            return Err(bad(format!(
                "snapshot table larger than {MAX_SNAPSHOT_TABLE} bytes"
            )));
        }
        if body_start.checked_add(body).is_none_or(|e| e > file_len) {
            return Err(past_end());
        }
        let mut b = vec![0u8; to_usize("snapshot table entry", body)?];
        f.read_at(&mut b, body_start)?;
        let e = to_usize("snapshot extra data", extra_len)?;
        let id_end = to_usize("snapshot id", extra_len + id_len)?;
        let mut vm_state_size = u64::from(be32(&hd, 32));
        let mut disk_size = None;
        if e >= 8 {
            vm_state_size = be64(&b, 0);
        }
        if e >= 16 {
            disk_size = Some(be64(&b, 8));
        }
        let id = String::from_utf8_lossy(&b[e..id_end]).into_owned();
        let name = String::from_utf8_lossy(&b[id_end..]).into_owned();
        let l1_bytes = table_bytes("snapshot L1 table", u64::from(l1_size), 8)?;
        if l1_bytes > MAX_L1_BYTES {
            return Err(bad(format!("snapshot L1 table of {l1_size} entries")));
        }
        if l1_size > 0
            && (l1_table_offset % cs != 0
                || l1_table_offset
                    .checked_add(l1_bytes)
                    .is_none_or(|e| e > file_len))
        {
            return Err(bad(format!(
                "snapshot L1 table offset {l1_table_offset:#x} is unaligned, \
                 overflows or runs past the end of the file"
            )));
        }
        out.push(Snapshot {
            id,
            name,
            l1_table_offset,
            l1_size,
            date_sec: be32(&hd, 16),
            date_nsec: be32(&hd, 20),
            vm_clock_nsec: be64(&hd, 24),
            vm_state_size,
            disk_size,
        });
        pos = next;
    }
    Ok(out)
}

/// Bytes the snapshot table occupies (its entries were checked when the
/// image was opened; the file may have changed since, so this checks again).
pub(crate) fn table_len(f: &HostFile, h: &Header) -> Result<u64> {
    let mut pos = h.snapshots_offset;
    for i in 0..h.nb_snapshots {
        let mut hd = [0u8; 40];
        f.read_at(&mut hd, pos)?;
        let (id_len, name_len, extra_len) = entry_lens(&hd);
        pos = extra_len
            .checked_add(id_len)
            .and_then(|x| x.checked_add(name_len))
            .and_then(|body| next_entry(pos, body))
            .filter(|&next| next - h.snapshots_offset <= MAX_SNAPSHOT_TABLE)
            .ok_or_else(|| {
                Qcow2Error::BadSnapshot(format!(
                    "entry {i} at offset {pos:#x}: the table overflows or exceeds \
                     {MAX_SNAPSHOT_TABLE} bytes"
                ))
            })?;
    }
    Ok(pos - h.snapshots_offset)
}
