//! Internal snapshots created, applied and deleted by us, with qemu-img as
//! the oracle both ways: it lists, checks and applies ours, and we list,
//! apply and delete its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::snapshot::format_list;
use virtkit_qcow2::{
    check_image, create, BackingMode, CreateOptions, OpenOptions, Qcow2, Qcow2Error, Repair,
};

/// Whether qemu-img and qemu-io are installed; the tests skip (saying so)
/// when they are not.
fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if !ok {
        eprintln!("SKIPPED: qemu-img/qemu-io not installed (apt-get install qemu-utils)");
    }
    ok
}

/// `qemu-img snapshot -l` in UTC (our listing prints UTC dates).
fn qemu_list(img: &Path) -> String {
    let o = Command::new("qemu-img")
        .env("TZ", "UTC")
        .args(["snapshot", "-l", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `qemu-img check` finds nothing at all: no corruption (COPIED flags
/// included), no leak.
fn assert_clean(img: &Path, step: &str) {
    let (code, json) = qemu_check(img);
    assert_eq!(code, 0, "{step}: qemu-img check: {json}");
    assert!(json.get("leaks").is_none(), "{step}: {json}");
    assert!(json.get("corruptions").is_none(), "{step}: {json}");
    let q = Qcow2::open(img, ro()).unwrap();
    let rep = check_image(&q, Repair::None).unwrap();
    assert_eq!(rep.exit_code(), 0, "{step}: our check: {:?}", rep.messages);
}

/// The content of snapshot `name` according to qemu-img (without applying it).
fn qemu_snapshot_raw(img: &Path, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snap.raw");
    let sel = format!("snapshot.name={name}");
    let p = img.to_str().unwrap();
    qemu_img(&["convert", "-l", &sel, "-O", "raw", p, out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        backing: BackingMode::Ignore,
        ..Default::default()
    }
}

fn new_image(img: &Path, size: u64, cluster_size: u64) {
    create(
        img,
        &CreateOptions {
            size,
            cluster_size,
            ..Default::default()
        },
    )
    .unwrap();
}

/// Writes of every shape (whole clusters, partial ones, across L2 tables,
/// zeroes, discards) applied to `disk` and `model`.
fn scribble(disk: &Qcow2, model: &mut [u8], seed: u64) {
    let size = model.len() as u64;
    let mut r = seed | 1;
    for i in 0..120u64 {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        let off = (r % (size / 512)) * 512;
        let len = ((1 + (r >> 20) % 40) * 512).min(size - off);
        let range = off as usize..(off + len) as usize;
        match (r >> 40) % 8 {
            0 => {
                disk.write_zeroes(off, len).unwrap();
                model[range].fill(0);
            }
            _ => {
                let b = (seed as u8).wrapping_mul(31).wrapping_add(i as u8) | 1;
                disk.write_at(&vec![b; len as usize], off).unwrap();
                model[range].fill(b);
            }
        }
    }
}

#[test]
fn ours_are_listed_checked_and_applied_by_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    let p = img.to_str().unwrap();
    new_image(&img, 16 << 20, 65536);
    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.write_at(&[0x11; 1 << 20], 0).unwrap();
    q.write_at(&[0x12; 4096], 5 << 20).unwrap();
    let sn = q.create_snapshot("snap1").unwrap();
    assert_eq!((sn.id.as_str(), sn.disk_size), ("1", Some(16 << 20)));
    let ours = format_list(q.snapshots());
    q.close().unwrap();
    assert_eq!(qemu_list(&img), ours);
    assert_clean(&img, "after create");
    let at_snapshot = qemu_raw(&img, "qcow2");

    // Writes after the snapshot copy the shared clusters on write.
    let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.write_at(&[0x22; 1 << 20], 0).unwrap();
    q.write_at(&[0x23; 512], (5 << 20) + 512).unwrap();
    q.write_at(&[0x24; 65536], 9 << 20).unwrap();
    q.close().unwrap();
    assert_clean(&img, "after writes");
    qemu_io(&img, "qcow2", &["read -P 0x22 0 1M", "read -P 0x24 9M 64k"]);
    assert_same(&qemu_snapshot_raw(&img, "snap1"), &at_snapshot, "snapshot");

    qemu_img(&["snapshot", "-a", "snap1", p]);
    assert_clean(&img, "after qemu-img applied ours");
    qemu_io(&img, "qcow2", &["read -P 0x11 0 1M", "read -P 0 9M 64k"]);
    assert_same(
        &qemu_raw(&img, "qcow2"),
        &at_snapshot,
        "applied by qemu-img",
    );
}

#[test]
fn qemu_snapshots_listed_applied_and_deleted_by_us() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("q.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, "8M"]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x33 0 2M", "write -c -P 0x34 4M 128k"],
    );
    qemu_img(&["snapshot", "-c", "a", p]);
    let model_a = qemu_raw(&img, "qcow2");
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x44 1M 2M", "write -P 0x45 4M 4k"],
    );
    qemu_img(&["snapshot", "-c", "b", p]);
    let model_b = qemu_raw(&img, "qcow2");
    qemu_io(&img, "qcow2", &["write -P 0x55 0 512k"]);

    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    assert_eq!(format_list(q.snapshots()), qemu_list(&img));
    q.apply_snapshot("a").unwrap();
    assert_same(&read_all(&q), &model_a, "snapshot a read by us");
    q.close().unwrap();
    assert_clean(&img, "after apply a");
    assert_same(
        &qemu_raw(&img, "qcow2"),
        &model_a,
        "snapshot a read by qemu",
    );
    assert_same(&qemu_snapshot_raw(&img, "b"), &model_b, "b untouched");

    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.apply_snapshot("2").unwrap(); // by id
    assert_same(&read_all(&q), &model_b, "snapshot b read by us");
    q.delete_snapshot("b").unwrap();
    assert_eq!(q.snapshots().len(), 1);
    q.close().unwrap();
    assert_clean(&img, "after delete b");
    assert!(!qemu_list(&img).contains(" b "));
    assert_same(&qemu_raw(&img, "qcow2"), &model_b, "active keeps b's data");

    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.delete_snapshot("1").unwrap();
    q.close().unwrap();
    assert_clean(&img, "after delete all");
    assert_eq!(qemu_list(&img), "");
    assert_same(&qemu_raw(&img, "qcow2"), &model_b, "data after delete all");
}

#[test]
fn vm_like_snapshot_write_apply_delete_all() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.qcow2");
    // Small clusters: many L2 tables, writes across them.
    new_image(&img, 8 << 20, 4096);
    let mut model = vec![0u8; 8 << 20];
    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    scribble(&q, &mut model, 1);
    q.write_compressed(&[0x77; 4096], 6 << 20).unwrap();
    model[6 << 20..(6 << 20) + 4096].fill(0x77);
    q.create_snapshot("s1").unwrap();
    let model1 = model.clone();
    scribble(&q, &mut model, 2);
    q.create_snapshot("s2").unwrap();
    let model2 = model.clone();
    scribble(&q, &mut model, 3);
    q.flush().unwrap();
    assert_eq!(check_image(&q, Repair::None).unwrap().exit_code(), 0);
    q.close().unwrap();
    assert_clean(&img, "two snapshots and writes");
    assert_same(&qemu_raw(&img, "qcow2"), &model, "active");
    assert_same(&qemu_snapshot_raw(&img, "s1"), &model1, "s1");
    assert_same(&qemu_snapshot_raw(&img, "s2"), &model2, "s2");

    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.apply_snapshot("s1").unwrap();
    assert_same(&read_all(&q), &model1, "back at s1");
    let mut model = model1.clone();
    scribble(&q, &mut model, 4);
    q.apply_snapshot("s2").unwrap();
    assert_same(&read_all(&q), &model2, "back at s2");
    let mut model = model2.clone();
    scribble(&q, &mut model, 5);
    q.close().unwrap();
    assert_clean(&img, "after applies");

    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.delete_snapshot("s1").unwrap();
    q.delete_snapshot("s2").unwrap();
    assert!(q.snapshots().is_empty());
    q.close().unwrap();
    assert_clean(&img, "all deleted");
    assert_same(&qemu_raw(&img, "qcow2"), &model, "data after deleting all");
    // COPIED flags right (qemu-img check compares them with the refcounts):
    // a full rewrite stays consistent.
    let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.write_at(&vec![0x5a; 8 << 20], 0).unwrap();
    q.close().unwrap();
    assert_clean(&img, "rewritten");
    qemu_io(&img, "qcow2", &["read -P 0x5a 0 8M"]);
}

#[test]
fn snapshot_of_an_image_with_a_backing_file() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let t = top.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "4M"]);
    qemu_io(&base, "qcow2", &["write -P 0x61 0 4M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        t,
    ]);
    let opts = OpenOptions {
        backing: BackingMode::Follow,
        ..Default::default()
    };
    let mut q = Qcow2::open(&top, opts.clone()).unwrap();
    q.write_at(&[0x62; 8192], 4096).unwrap();
    q.create_snapshot("top").unwrap();
    q.write_at(&[0x63; 8192], 0).unwrap();
    q.apply_snapshot("top").unwrap();
    q.close().unwrap();
    assert_clean(&top, "backing");
    qemu_io(
        &top,
        "qcow2",
        &[
            "read -P 0x61 0 4k",
            "read -P 0x62 4k 8k",
            "read -P 0x61 12k 4k",
        ],
    );
}

#[test]
fn refusals_are_clear_errors() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.qcow2");
    new_image(&img, 4 << 20, 65536);
    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    q.create_snapshot("x").unwrap();
    let e = q.create_snapshot("x").unwrap_err();
    assert!(matches!(e, Qcow2Error::SnapshotExists(_)), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    for key in ["nope", "2"] {
        let e = q.apply_snapshot(key).unwrap_err();
        assert!(matches!(e, Qcow2Error::SnapshotNotFound(_)), "{e}");
        let e = q.delete_snapshot(key).unwrap_err();
        assert!(e.to_string().contains("no snapshot with id or name"), "{e}");
    }
    let e = q.create_snapshot("").unwrap_err();
    assert!(matches!(e, Qcow2Error::BadSnapshotName(_)), "{e}");
    q.close().unwrap();

    let mut r = Qcow2::open(&img, ro()).unwrap();
    assert!(matches!(r.create_snapshot("y"), Err(Qcow2Error::ReadOnly)));
    assert!(matches!(r.apply_snapshot("x"), Err(Qcow2Error::ReadOnly)));
    assert!(matches!(r.delete_snapshot("x"), Err(Qcow2Error::ReadOnly)));
    drop(r);
    assert_clean(&img, "after refusals");

    // 1-bit refcounts cannot count a second reference.
    let one = dir.path().join("one.qcow2");
    create(
        &one,
        &CreateOptions {
            size: 1 << 20,
            refcount_bits: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut q = Qcow2::open(&one, OpenOptions::default()).unwrap();
    q.write_at(&[1; 512], 0).unwrap();
    let e = q.create_snapshot("s").unwrap_err();
    assert!(e.to_string().contains("refcounts hold"), "{e}");
    q.close().unwrap();
    assert_eq!(qemu_check(&one).0, 0, "a refused create changes nothing");

    // Marked corrupt: refused with a hint to repair.
    let bad = dir.path().join("c.qcow2");
    std::fs::copy(&img, &bad).unwrap();
    patch(&bad, 72, &2u64.to_be_bytes());
    let mut q = Qcow2::open(&bad, OpenOptions::default()).unwrap();
    let e = q.create_snapshot("z").unwrap_err();
    assert!(e.to_string().contains("check -r all"), "{e}");
}

#[test]
fn corrupt_snapshot_tables_are_errors_not_panics() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("g.qcow2");
    new_image(&good, 4 << 20, 65536);
    let mut q = Qcow2::open(&good, OpenOptions::default()).unwrap();
    q.write_at(&[9; 4096], 0).unwrap();
    q.create_snapshot("s").unwrap();
    q.close().unwrap();
    let table = header_u64(&good, 64);
    let sn_l1 = header_u64(&good, table as usize);
    let cases: [(&str, u64, Vec<u8>); 5] = [
        ("huge l1_size", table + 8, u32::MAX.to_be_bytes().to_vec()),
        ("unaligned L1", table, (sn_l1 + 8).to_be_bytes().to_vec()),
        (
            "L1 past the end",
            table,
            (1u64 << 50).to_be_bytes().to_vec(),
        ),
        (
            "table past the end",
            64,
            (1u64 << 40).to_be_bytes().to_vec(),
        ),
        (
            "huge extra data",
            table + 36,
            0x10_0000u32.to_be_bytes().to_vec(),
        ),
    ];
    for (what, off, bytes) in cases {
        let img = dir.path().join("bad.qcow2");
        std::fs::copy(&good, &img).unwrap();
        patch(&img, off, &bytes);
        match Qcow2::open(&img, OpenOptions::default()) {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains("snapshot"), "{what}: {s}");
            }
        }
    }
    // An L1 entry of the snapshot pointing past the end of the file: the
    // table opens, apply and delete fail cleanly and change nothing.
    let img = dir.path().join("l2.qcow2");
    std::fs::copy(&good, &img).unwrap();
    patch(&img, sn_l1, &(1u64 << 40).to_be_bytes());
    let mut q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    for r in [q.apply_snapshot("s"), q.delete_snapshot("s").map(|_| ())] {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("L2 table offset"), "{e}");
    }
    q.close().unwrap();
    let before = std::fs::read(&good).unwrap();
    let after = std::fs::read(&img).unwrap();
    assert_eq!(before.len(), after.len(), "nothing was allocated");
}
