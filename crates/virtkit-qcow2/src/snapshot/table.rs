//! The on-disk snapshot table: reading it (every size and offset checked)
//! and encoding a new one.

use virtkit_block::HostFile;

use super::{Snapshot, MAX_SNAPSHOT_TABLE};
use crate::bounds::{table_bytes, to_usize};
use crate::error::{Qcow2Error, Result};
use crate::header::{Header, MAX_L1_BYTES};

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
        let mut icount = None;
        if e >= 8 {
            vm_state_size = be64(&b, 0);
        }
        if e >= 16 {
            disk_size = Some(be64(&b, 8));
        }
        if e >= 24 {
            // -1: no instruction count recorded.
            icount = Some(be64(&b, 16)).filter(|&n| n != u64::MAX);
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
            icount,
            extra_data: b[..e].to_vec(),
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

/// Extra data written for a new snapshot: the 64-bit VM state size, the
/// disk size and the instruction count (what QEMU writes).
pub(crate) fn new_extra_data(vm_state_size: u64, disk_size: u64, icount: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&vm_state_size.to_be_bytes());
    v.extend_from_slice(&disk_size.to_be_bytes());
    v.extend_from_slice(&icount.to_be_bytes());
    v
}

/// Encode a snapshot table (entries 8-byte aligned). Each entry's extra data
/// is written as stored, so fields this code does not know survive.
pub(crate) fn encode_snapshots(list: &[Snapshot]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let too_long = |what: &str, len: usize| {
            Qcow2Error::BadSnapshot(format!("entry {i}: {what} of {len} bytes is too long"))
        };
        let id_len = u16::try_from(s.id.len()).map_err(|_| too_long("id", s.id.len()))?;
        let name_len = u16::try_from(s.name.len()).map_err(|_| too_long("name", s.name.len()))?;
        let extra_len = u32::try_from(s.extra_data.len())
            .ok()
            .filter(|&n| n <= 1024)
            .ok_or_else(|| too_long("extra data", s.extra_data.len()))?;
        out.extend_from_slice(&s.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&s.l1_size.to_be_bytes());
        out.extend_from_slice(&id_len.to_be_bytes());
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(&s.date_sec.to_be_bytes());
        out.extend_from_slice(&s.date_nsec.to_be_bytes());
        out.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
        // The 32-bit field holds the low half; the extra data the whole size.
        out.extend_from_slice(&(s.vm_state_size as u32).to_be_bytes());
        out.extend_from_slice(&extra_len.to_be_bytes());
        out.extend_from_slice(&s.extra_data);
        out.extend_from_slice(s.id.as_bytes());
        out.extend_from_slice(s.name.as_bytes());
        out.resize(out.len().next_multiple_of(8), 0);
        if out.len() as u64 > MAX_SNAPSHOT_TABLE {
            return Err(Qcow2Error::BadSnapshot(format!(
                "the snapshot table would exceed {MAX_SNAPSHOT_TABLE} bytes"
            )));
        }
    }
    Ok(out)
}
