//! Consistency check and refcount repair (what `qemu-img check` does),
//! over the metadata layer only: the image file, its `Meta`, the virtual
//! disk size and the snapshot list. The image (`Qcow2::check`) calls it
//! with guest I/O excluded; [`crate::check`] is the public face.

use virtkit_block::HostFile;

use crate::bounds::{table_bytes, to_usize};
use crate::error::{Qcow2Error, Result};
use crate::meta::{decode_l2, Mapping, Meta, COPIED, OFF_MASK};
use crate::snapshot::{table_len, Snapshot};

/// What a check may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Report only.
    None,
    /// Lower refcounts of leaked clusters.
    Leaks,
    /// Fix leaks and refcounts that are too low.
    All,
}

/// Result of a check, with the figures `qemu-img check --output=json` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Refcounts lower than the references (or broken references).
    pub corruptions: u64,
    /// Refcounts higher than the references.
    pub leaks: u64,
    /// Errors that prevented checking part of the image.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Guest clusters with data (including compressed) in the active L1.
    pub allocated_clusters: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// Data clusters not stored right after the previous one.
    pub fragmented_clusters: u64,
    /// End of the last cluster in use.
    pub image_end_offset: u64,
    /// One line per problem found.
    pub messages: Vec<String>,
}

impl CheckReport {
    /// `qemu-img check`'s exit status: 0 clean, 2 corruptions, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > self.corruptions_fixed {
            2
        } else if self.leaks > self.leaks_fixed {
            3
        } else {
            0
        }
    }
}

/// Most host clusters a check (or a dirty-image rebuild) will count: the
/// count table then takes at most 1 GiB.
pub const MAX_CHECK_CLUSTERS: u64 = 1 << 27;

/// What a check reads besides the metadata state.
#[derive(Debug)]
pub(crate) struct CheckTarget<'a> {
    /// The image file.
    pub file: &'a HostFile,
    /// Virtual disk size in bytes.
    pub disk_size: u64,
    /// The internal snapshots, whose L1 tables hold references too.
    pub snapshots: &'a [Snapshot],
}

struct Counter {
    refs: Vec<u64>,
    cb: u32,
}

impl Counter {
    fn inc(&mut self, rep: &mut CheckReport, what: &str, off: u64, n: u64) {
        let c0 = off >> self.cb;
        for c in c0..c0.saturating_add(n) {
            match usize::try_from(c).ok().and_then(|i| self.refs.get_mut(i)) {
                Some(r) => *r += 1,
                None => {
                    rep.corruptions += 1;
                    rep.messages.push(format!(
                        "ERROR {what} at {:#x} is past the end of the image file",
                        c << self.cb
                    ));
                }
            }
        }
    }
}

pub(crate) fn read_table(
    f: &HostFile,
    what: &'static str,
    off: u64,
    entries: u64,
) -> Result<Vec<u64>> {
    let mut b = vec![0u8; to_usize(what, table_bytes(what, entries, 8)?)?];
    f.read_at(&mut b, off)?;
    Ok(b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect())
}

/// Walk one L1 table, counting references.
fn walk_l1(
    f: &HostFile,
    m: &Meta,
    l1: &[u64],
    active: bool,
    cnt: &mut Counter,
    rep: &mut CheckReport,
    flen: u64,
) -> Result<()> {
    let cs = m.cs;
    let mut prev_end = 0u64;
    for (i, &l1e) in l1.iter().enumerate() {
        let l2_off = l1e & OFF_MASK;
        if l2_off == 0 {
            continue;
        }
        if l2_off % cs != 0 || l2_off >= flen {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR L1 entry {i}: L2 table offset {l2_off:#x} unaligned or past the end of the file"
            ));
            continue;
        }
        cnt.inc(rep, "L2 table", l2_off, 1);
        let l2 = read_table(f, "L2 table", l2_off, m.l2_entries * m.l2_words)?;
        for (j, &e) in l2.iter().step_by(m.l2_words as usize).enumerate() {
            let gc = i as u64 * m.l2_entries + j as u64;
            let map = match decode_l2(e, m.cb) {
                Ok(map) => map,
                Err(err) => {
                    rep.corruptions += 1;
                    rep.messages
                        .push(format!("ERROR guest cluster {gc}: {err}"));
                    continue;
                }
            };
            if let Some((c0, n)) = map.host_clusters(m.cb) {
                if (c0 << m.cb) >= flen {
                    rep.corruptions += 1;
                    rep.messages.push(format!(
                        "ERROR guest cluster {gc} points past the end of the file ({:#x})",
                        c0 << m.cb
                    ));
                    continue;
                }
                cnt.inc(rep, "data cluster", c0 << m.cb, n);
            }
            if active {
                match map {
                    Mapping::Data { off, .. } => {
                        rep.allocated_clusters += 1;
                        if prev_end != 0 && off != prev_end {
                            rep.fragmented_clusters += 1;
                        }
                        prev_end = off + cs;
                    }
                    Mapping::Compressed { .. } => {
                        rep.allocated_clusters += 1;
                        rep.compressed_clusters += 1;
                        rep.fragmented_clusters += 1;
                        prev_end = 0;
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Check the metadata `m` of the image in `t` and optionally repair
/// refcounts. The caller excludes guest I/O, flushes `m` first when the
/// image is writable, and refuses a repair of a read-only image.
pub(crate) fn check_meta(t: &CheckTarget<'_>, m: &mut Meta, repair: Repair) -> Result<CheckReport> {
    let f = t.file;
    let cs = m.cs;
    let flen = f.len()?;
    let mut rep = CheckReport {
        total_clusters: t.disk_size.div_ceil(cs),
        ..Default::default()
    };
    let clusters = flen.div_ceil(cs);
    if clusters > MAX_CHECK_CLUSTERS {
        return Err(Qcow2Error::TooLarge(format!(
            "image file of {clusters} clusters is too large to check (limit {MAX_CHECK_CLUSTERS})"
        )));
    }
    let mut cnt = Counter {
        refs: vec![0; clusters as usize],
        cb: m.cb,
    };
    cnt.inc(&mut rep, "header", 0, 1);
    let l1_bytes = m.h.l1_bytes()?;
    if l1_bytes > 0 {
        cnt.inc(
            &mut rep,
            "L1 table",
            m.h.l1_table_offset,
            l1_bytes.div_ceil(cs),
        );
    }
    cnt.inc(
        &mut rep,
        "refcount table",
        m.h.refcount_table_offset,
        u64::from(m.h.refcount_table_clusters),
    );
    let reftable = m.reftable.clone();
    for (i, &e) in reftable.iter().enumerate() {
        let o = e & !0x1ff;
        if o == 0 {
            continue;
        }
        if o % cs != 0 || o >= flen {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR refcount block {i} offset {o:#x} unaligned or past the end of the file"
            ));
            continue;
        }
        cnt.inc(&mut rep, "refcount block", o, 1);
    }
    if m.h.nb_snapshots > 0 {
        let len = table_len(f, &m.h)?;
        cnt.inc(
            &mut rep,
            "snapshot table",
            m.h.snapshots_offset,
            len.div_ceil(cs),
        );
    }
    let active = m.l1.clone();
    walk_l1(f, m, &active, true, &mut cnt, &mut rep, flen)?;
    for s in t.snapshots {
        let what = "snapshot L1 table";
        let l1 = read_table(f, what, s.l1_table_offset, u64::from(s.l1_size))?;
        let l1_bytes = table_bytes(what, u64::from(s.l1_size), 8)?;
        cnt.inc(&mut rep, what, s.l1_table_offset, l1_bytes.div_ceil(cs));
        walk_l1(f, m, &l1, false, &mut cnt, &mut rep, flen)?;
    }
    rep.image_end_offset = cnt
        .refs
        .iter()
        .rposition(|&r| r != 0)
        .map_or(0, |c| (c as u64 + 1) * cs);

    // COPIED flags of the active tables must match refcount == 1.
    for (i, &l1e) in active.iter().enumerate() {
        let l2_off = l1e & OFF_MASK;
        if l2_off == 0 || l2_off % cs != 0 || l2_off >= flen {
            continue;
        }
        let cb = m.cb;
        let rc = m.refcount(f, l2_off >> cb).unwrap_or(0);
        if (rc == 1) != (l1e & COPIED != 0) {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:#x} refcount={rc}"
            ));
        }
    }

    // Compare refcounts.
    let covered = reftable.len() as u64 * ((cs * 8) >> m.h.refcount_order);
    let limit = covered.max(cnt.refs.len() as u64);
    let fix_leaks = repair != Repair::None;
    let fix_all = repair == Repair::All;
    if repair != Repair::None {
        m.reserved = Some(cnt.refs.clone());
    }
    let mut c = 0u64;
    let per = (cs * 8) >> m.h.refcount_order;
    while c < limit {
        if c >= cnt.refs.len() as u64 {
            let ti = (c / per) as usize;
            if m.reftable.get(ti).is_none_or(|&e| e & !0x1ff == 0) {
                c = (c / per + 1) * per;
                continue;
            }
        }
        let expected = cnt.refs.get(c as usize).copied().unwrap_or(0);
        let expected = match &m.reserved {
            Some(r) => r.get(c as usize).copied().unwrap_or(expected),
            None => expected,
        };
        let on_disk = match m.refcount(f, c) {
            Ok(r) => r,
            Err(e) => {
                rep.check_errors += 1;
                rep.messages
                    .push(format!("ERROR cannot read refcount of cluster {c}: {e}"));
                // Skip the rest of this refcount block.
                c = (c / per + 1) * per;
                continue;
            }
        };
        if on_disk != 0 || expected != 0 {
            rep.image_end_offset = rep.image_end_offset.max((c + 1) * cs);
        }
        if on_disk != expected {
            let leak = on_disk > expected;
            let kind = if leak {
                "Leaked cluster"
            } else {
                "ERROR cluster"
            };
            rep.messages.push(format!(
                "{kind} {c} refcount={on_disk} reference={expected}"
            ));
            if leak {
                rep.leaks += 1;
            } else {
                rep.corruptions += 1;
            }
            if (leak && fix_leaks) || (!leak && fix_all) {
                let v = expected.min(m.refcount_max());
                m.set_refcount(f, c, v)?;
                if leak {
                    rep.leaks_fixed += 1;
                } else {
                    rep.corruptions_fixed += 1;
                }
            }
        }
        c += 1;
    }
    if repair != Repair::None {
        m.flush(f)?;
        m.reserved = None;
        m.set_free_hint(1);
    }
    Ok(rep)
}
