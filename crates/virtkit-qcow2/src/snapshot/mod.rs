//! Internal snapshots, as `qemu-img snapshot` has them: list, create, apply
//! (revert to) and delete.
//!
//! Layout: this file (the [`Snapshot`] type and the `-l` listing format) <-
//! `table` (reading and encoding the on-disk table) <- `ops` (the operations
//! on a [`Qcow2`](crate::Qcow2): [`Qcow2::create_snapshot`],
//! [`Qcow2::apply_snapshot`], [`Qcow2::delete_snapshot`]). The reference
//! counting they need lives with the rest of it in the metadata layer.
//!
//! A snapshot shares clusters with the active image: creating one adds a
//! reference to every L2 table and data cluster the active L1 table reaches,
//! and clears their COPIED flags, so the write path copies them on write.
//!
//! [`Qcow2::create_snapshot`]: crate::Qcow2::create_snapshot
//! [`Qcow2::apply_snapshot`]: crate::Qcow2::apply_snapshot
//! [`Qcow2::delete_snapshot`]: crate::Qcow2::delete_snapshot

mod ops;
mod table;

pub(crate) use table::{read_snapshots, table_len};

/// Largest snapshot table accepted (as QEMU): 64 MiB.
pub const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;

/// Longest snapshot name accepted on create (QEMU keeps 255 bytes).
pub const MAX_SNAPSHOT_NAME: usize = 255;

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
    /// Instruction count when taken (extra data), if recorded.
    pub icount: Option<u64>,
    /// The entry's extra data as stored, written back unchanged when the
    /// table is rewritten.
    pub extra_data: Vec<u8>,
}

/// `qemu-img snapshot -l`'s listing of `snaps` (empty when there are none).
/// Dates are shown in UTC (qemu-img uses the local time zone).
pub fn format_list(snaps: &[Snapshot]) -> String {
    if snaps.is_empty() {
        return String::new();
    }
    let mut out = String::from("Snapshot list:\n");
    out.push_str(&format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    ));
    for s in snaps {
        let secs = s.vm_clock_nsec / 1_000_000_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (s.vm_clock_nsec / 1_000_000) % 1000
        );
        let icount = s.icount.map(|n| n.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\n",
            s.id,
            s.name,
            size_to_str(s.vm_state_size),
            utc_date(u64::from(s.date_sec)),
            clock,
            icount
        ));
    }
    out
}

/// QEMU's `size_to_str`: three significant digits and a binary suffix,
/// switching to the next suffix from 1000 on.
pub fn size_to_str(v: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut i = 0;
    let mut x = v as f64;
    while x >= 1000.0 && i < SUFFIXES.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    // printf's %0.3g for 0 <= x < 1000.
    let digits = if x >= 99.95 {
        0
    } else if x >= 9.995 {
        1
    } else if x >= 0.9995 {
        2
    } else {
        3
    };
    let mut s = format!("{x:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s} {}B", SUFFIXES[i])
}

/// `YYYY-MM-DD HH:MM:SS` of `secs` since the epoch, in UTC.
fn utc_date(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, name: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            name: name.into(),
            l1_table_offset: 0x50000,
            l1_size: 1,
            date_sec: 1_796_641_038,
            date_nsec: 0,
            vm_clock_nsec: 3_723_004_000_000,
            vm_state_size: 0,
            disk_size: Some(16 << 20),
            icount: Some(0),
            extra_data: table::new_extra_data(0, 16 << 20, 0),
        }
    }

    #[test]
    fn listing_matches_qemu_img() {
        let out = format_list(&[snap("1", "s1")]);
        assert_eq!(
            out,
            "Snapshot list:\n\
             ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n\
             1         s1                    0 B 2026-12-07 10:57:18 01:02:03.004          0\n"
        );
        assert_eq!(format_list(&[]), "");
    }

    #[test]
    fn sizes_and_dates() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(1536), "1.5 KiB");
        assert_eq!(size_to_str(16 << 20), "16 MiB");
        assert_eq!(size_to_str(200 << 20), "200 MiB");
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn table_round_trip() {
        let list = vec![snap("1", "a"), snap("22", "second one")];
        let buf = table::encode_snapshots(&list).unwrap();
        assert_eq!(buf.len() % 8, 0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let mut file = vec![0u8; 0x60000];
        file[0x1000..0x1000 + buf.len()].copy_from_slice(&buf);
        std::fs::write(&p, &file).unwrap();
        let f = virtkit_block::HostFile::open(&p, true, false).unwrap();
        let h = crate::header::Header {
            cluster_bits: 16,
            nb_snapshots: 2,
            snapshots_offset: 0x1000,
            ..test_header()
        };
        let back = read_snapshots(&f, &h, file.len() as u64).unwrap();
        assert_eq!(back, list);
        assert_eq!(table_len(&f, &h).unwrap(), buf.len() as u64);
    }

    fn test_header() -> crate::header::Header {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.qcow2");
        crate::create(
            &p,
            &crate::CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        crate::Qcow2::open(&p, crate::OpenOptions::default())
            .unwrap()
            .header()
            .clone()
    }
}
