//! Creating, applying and deleting internal snapshots of an image opened
//! writable, in QEMU's order. Every step is synced before the next, so a
//! crash part-way leaves refcounts that are too high (leaks), never a table
//! pointing at a cluster whose refcount is too low:
//!
//! - create: copy the active L1 table to new clusters, add a reference to
//!   everything it reaches, clear the COPIED flags now shared, write the new
//!   snapshot table, switch the header to it, free the old table;
//! - apply: add a reference to everything the snapshot reaches, write its
//!   L1 table as the new active one and switch the header (with the
//!   snapshot's disk size), drop the old active table's references, set the
//!   COPIED flags again;
//! - delete: write the table without the snapshot and switch the header,
//!   drop the references of its L1 table and free it, set the COPIED flags
//!   again.
//!
//! Between the reference counts and the COPIED flags a crash can leave
//! flags that disagree with the refcounts (`check -r all` fixes them); the
//! data of the image and of every snapshot stays intact.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use virtkit_block::HostFile;

use super::table::{encode_snapshots, new_extra_data};
use super::{table_len, Snapshot, MAX_SNAPSHOT_NAME};
use crate::bounds::table_bytes;
use crate::consistency::{read_table, Repair};
use crate::error::{Qcow2Error, Result};
use crate::header::{off, INCOMPAT_CORRUPT, MAX_L1_BYTES, MAX_SNAPSHOTS};
use crate::image::Qcow2;
use crate::meta::{Meta, COPIED};

fn meta_mut(m: &mut Mutex<Meta>) -> &mut Meta {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

/// The L1 table of snapshot `sn` (its size and offset were checked when the
/// table was read).
fn snapshot_l1(f: &HostFile, sn: &Snapshot) -> Result<Vec<u64>> {
    read_table(
        f,
        "snapshot L1 table",
        sn.l1_table_offset,
        u64::from(sn.l1_size),
    )
}

/// Write `list` as the new snapshot table and point the header at it (one
/// write of the count and offset); the old table is freed at the next flush.
fn write_table(m: &mut Meta, f: &HostFile, list: &[Snapshot]) -> Result<u64> {
    let buf = encode_snapshots(list)?;
    let nb = u32::try_from(list.len())
        .ok()
        .filter(|&n| n <= MAX_SNAPSHOTS)
        .ok_or_else(|| Qcow2Error::TooLarge(format!("more than {MAX_SNAPSHOTS} snapshots")))?;
    let old = match m.h.nb_snapshots {
        0 => None,
        _ => Some((m.h.snapshots_offset, table_len(f, &m.h)?)),
    };
    let new_off = if buf.is_empty() {
        0
    } else {
        m.write_new_bytes(f, buf)?
    };
    let mut hb = [0u8; 12];
    hb[..4].copy_from_slice(&nb.to_be_bytes());
    hb[4..].copy_from_slice(&new_off.to_be_bytes());
    f.write_at(&hb, off::NB_SNAPSHOTS)?;
    f.sync()?;
    m.h.nb_snapshots = nb;
    m.h.snapshots_offset = new_off;
    if let Some((o, len)) = old.filter(|&(_, len)| len > 0) {
        m.free_later(o >> m.cb, len.div_ceil(m.cs));
    }
    Ok(new_off)
}

impl Qcow2 {
    /// The snapshot whose id is `key`, else the first one named `key` (as
    /// QEMU looks them up).
    pub fn find_snapshot(&self, key: &str) -> Option<&Snapshot> {
        self.snapshot_index(key).ok().map(|i| &self.snapshots[i])
    }

    fn snapshot_index(&self, key: &str) -> Result<usize> {
        let s = &self.snapshots;
        s.iter()
            .position(|s| s.id == key)
            .or_else(|| s.iter().position(|s| s.name == key))
            .ok_or_else(|| Qcow2Error::SnapshotNotFound(key.to_string()))
    }

    /// Refuse images whose snapshots must not change: read-only, marked
    /// corrupt, or dirty with refcounts that do not add up.
    fn snapshot_ready(&mut self) -> Result<()> {
        if self.header.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::NeedsRepair("the image is marked corrupt"));
        }
        if self.read_only {
            return Err(Qcow2Error::ReadOnly);
        }
        if self.is_dirty() {
            let rep = self.check(Repair::None)?;
            if rep.corruptions > 0 || rep.check_errors > 0 {
                return Err(Qcow2Error::NeedsRepair(
                    "the image has the dirty bit set and inconsistent refcounts",
                ));
            }
        }
        Ok(())
    }

    /// Create an internal snapshot of the current disk content named `name`
    /// (id: one more than the largest numeric id, as QEMU; VM state and
    /// clock 0). A name already in use is refused.
    pub fn create_snapshot(&mut self, name: &str) -> Result<Snapshot> {
        self.snapshot_ready()?;
        if name.is_empty() || name.len() > MAX_SNAPSHOT_NAME {
            return Err(Qcow2Error::BadSnapshotName(format!(
                "{name:?}: a name has 1 to {MAX_SNAPSHOT_NAME} bytes"
            )));
        }
        if self.snapshots.iter().any(|s| s.name == name) {
            return Err(Qcow2Error::SnapshotExists(name.to_string()));
        }
        let id = self
            .snapshots
            .iter()
            .map(|s| s.id.parse::<u64>().unwrap_or(0))
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let size = self.size;
        let f = &self.file;
        let m = meta_mut(&mut self.meta);
        m.flush(f)?;
        let l1 = m.l1.clone();
        let refs = m.l1_refs(f, &l1)?;
        // The copy shares everything it names: no COPIED flags.
        let copy: Vec<u64> = l1.iter().map(|e| e & !COPIED).collect();
        // The references first (refused before anything is written when a
        // refcount would overflow); the copy is synced with them.
        m.add_refs(f, &refs)?;
        let l1_off = m.write_new_table(f, &copy)?;
        m.update_copied_flags(f)?;
        m.flush(f)?;
        let sn = Snapshot {
            id: id.to_string(),
            name: name.to_string(),
            l1_table_offset: l1_off,
            l1_size: m.h.l1_size,
            date_sec: u32::try_from(now.as_secs()).unwrap_or(u32::MAX),
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: Some(size),
            icount: Some(0),
            extra_data: new_extra_data(0, size, 0),
        };
        let mut list = self.snapshots.clone();
        list.push(sn.clone());
        let table_off = write_table(m, f, &list)?;
        m.flush(f)?;
        self.header.nb_snapshots = m.h.nb_snapshots;
        self.header.snapshots_offset = table_off;
        self.snapshots = list;
        Ok(sn)
    }

    /// Revert the disk to snapshot `key` (an id or a name): the active L1
    /// table becomes a copy of the snapshot's, and the virtual size the
    /// snapshot recorded is restored. The snapshot is kept.
    pub fn apply_snapshot(&mut self, key: &str) -> Result<()> {
        self.snapshot_ready()?;
        let sn = self.snapshots[self.snapshot_index(key)?].clone();
        let size = sn.disk_size.unwrap_or(self.size);
        let f = &self.file;
        let m = meta_mut(&mut self.meta);
        m.flush(f)?;
        let sl1 = snapshot_l1(f, &sn)?;
        let new_refs = m.l1_refs(f, &sl1)?;
        let old_l1 = m.l1.clone();
        let old_refs = m.l1_refs(f, &old_l1)?;
        // Entries the restored size needs (the table may be larger).
        let need = size.div_ceil(m.cs * m.l2_entries);
        if table_bytes("L1 table", need, 8)? > MAX_L1_BYTES {
            return Err(Qcow2Error::TooLarge(format!(
                "snapshot {:?}: disk size {size} needs an L1 table over {MAX_L1_BYTES} bytes",
                sn.name
            )));
        }
        let len = (need as usize).max(sl1.len()).max(old_l1.len()).max(1);
        let mut l1: Vec<u64> = sl1.iter().map(|e| e & !COPIED).collect();
        l1.resize(len, 0);
        m.add_refs(f, &new_refs)?;
        m.write_refblocks(f)?;
        f.sync()?;
        m.replace_l1(f, l1, size)?;
        m.drop_refs(&old_refs);
        m.flush(f)?;
        m.update_copied_flags(f)?;
        m.flush(f)?;
        self.header.size = size;
        self.header.l1_size = m.h.l1_size;
        self.header.l1_table_offset = m.h.l1_table_offset;
        self.size = size;
        Ok(())
    }

    /// Delete snapshot `key` (an id or a name), releasing the clusters only
    /// it referenced; returns it.
    pub fn delete_snapshot(&mut self, key: &str) -> Result<Snapshot> {
        self.snapshot_ready()?;
        let idx = self.snapshot_index(key)?;
        let sn = self.snapshots[idx].clone();
        let f = &self.file;
        let m = meta_mut(&mut self.meta);
        m.flush(f)?;
        let sl1 = snapshot_l1(f, &sn)?;
        let mut refs = m.l1_refs(f, &sl1)?;
        let l1_bytes = table_bytes("snapshot L1 table", u64::from(sn.l1_size), 8)?;
        if l1_bytes > 0 {
            refs.push((sn.l1_table_offset >> m.cb, l1_bytes.div_ceil(m.cs)));
        }
        let mut list = self.snapshots.clone();
        list.remove(idx);
        let table_off = write_table(m, f, &list)?;
        m.drop_refs(&refs);
        m.flush(f)?;
        m.update_copied_flags(f)?;
        m.flush(f)?;
        self.header.nb_snapshots = m.h.nb_snapshots;
        self.header.snapshots_offset = table_off;
        self.snapshots = list;
        Ok(sn)
    }
}
