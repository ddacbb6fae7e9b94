//! The internal snapshot table (read only: snapshots are listed and their
//! clusters protected, never created or changed).

use virtkit_block::HostFile;

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

/// Read the snapshot table described by `h` from `f` (`file_len` bytes).
pub(crate) fn read_snapshots(f: &HostFile, h: &Header, file_len: u64) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut pos = h.snapshots_offset;
    let mut total = 0u64;
    let cs = h.cluster_size();
    for i in 0..h.nb_snapshots {
        let bad = |why: String| Qcow2Error::BadSnapshot(format!("entry {i}: {why}"));
        if pos.checked_add(40).is_none_or(|e| e > file_len) {
            return Err(bad("past the end of the file".into()));
        }
        let mut hd = [0u8; 40];
        f.read_at(&mut hd, pos)?;
        let l1_table_offset = be64(&hd, 0);
        let l1_size = be32(&hd, 8);
        let id_len = u64::from(be16(&hd, 12));
        let name_len = u64::from(be16(&hd, 14));
        let extra_len = u64::from(be32(&hd, 36));
        if extra_len > 1024 {
            return Err(bad(format!("extra data of {extra_len} bytes")));
        }
        let body = extra_len + id_len + name_len;
        total += 40 + body;
        if total > MAX_SNAPSHOT_TABLE {
            return Err(bad(format!(
                "snapshot table larger than {MAX_SNAPSHOT_TABLE} bytes"
            )));
        }
        if (pos + 40).checked_add(body).is_none_or(|e| e > file_len) {
            return Err(bad("past the end of the file".into()));
        }
        let mut b = vec![0u8; body as usize];
        f.read_at(&mut b, pos + 40)?;
        let e = extra_len as usize;
        let mut vm_state_size = u64::from(be32(&hd, 32));
        let mut disk_size = None;
        if e >= 8 {
            vm_state_size = be64(&b, 0);
        }
        if e >= 16 {
            disk_size = Some(be64(&b, 8));
        }
        let id = String::from_utf8_lossy(&b[e..e + id_len as usize]).into_owned();
        let name = String::from_utf8_lossy(&b[e + id_len as usize..]).into_owned();
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(format!("L1 table of {l1_size} entries")));
        }
        if l1_size > 0
            && (l1_table_offset % cs != 0
                || l1_table_offset
                    .checked_add(u64::from(l1_size) * 8)
                    .is_none_or(|e| e > file_len))
        {
            return Err(bad(format!("bad L1 table offset {l1_table_offset:#x}")));
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
        pos += (40 + body).div_ceil(8) * 8;
    }
    Ok(out)
}

/// Bytes the snapshot table occupies.
pub(crate) fn table_len(f: &HostFile, h: &Header) -> Result<u64> {
    let mut pos = h.snapshots_offset;
    for _ in 0..h.nb_snapshots {
        let mut hd = [0u8; 40];
        f.read_at(&mut hd, pos)?;
        let body = u64::from(be32(&hd, 36)) + u64::from(be16(&hd, 12)) + u64::from(be16(&hd, 14));
        pos += (40 + body).div_ceil(8) * 8;
    }
    Ok(pos - h.snapshots_offset)
}
