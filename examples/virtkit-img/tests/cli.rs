//! virtkit-img against qemu-img (package qemu-utils) on the same images.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} ({e}); these tests need qemu-utils"))
}

fn ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ours(args: &[&str]) -> String {
    ok(env!("CARGO_BIN_EXE_virtkit-img"), args)
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fields of `info --output=json` that must agree.
const INFO_FIELDS: &[&str] = &[
    "virtual-size",
    "cluster-size",
    "format",
    "format-specific",
    "backing-filename",
    "backing-filename-format",
    "full-backing-filename",
    "dirty-flag",
];

#[test]
fn info_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    ok("qemu-img", &["create", "-q", "-f", "raw", s(&base), "3M"]);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "a.qcow2".into(),
            vec!["-o", "cluster_size=4096,refcount_bits=1"],
        ),
        ("b.qcow2".into(), vec!["-o", "compat=0.10"]),
        (
            "c.qcow2".into(),
            vec!["-o", "lazy_refcounts=on,compression_type=zstd"],
        ),
        ("d.qcow2".into(), vec!["-b", "base.raw", "-F", "raw"]),
        ("e.qcow2".into(), vec!["-o", "extended_l2=on"]),
    ];
    for (name, opts) in cases {
        let img = d.join(&name);
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        args.extend(&opts);
        args.push(s(&img));
        if !opts.contains(&"-b") {
            args.push("5M");
        }
        ok("qemu-img", &args);
        let theirs = json(&ok("qemu-img", &["info", "--output=json", s(&img)]));
        let mine = json(&ours(&["info", "--output=json", s(&img)]));
        for f in INFO_FIELDS {
            assert_eq!(
                mine[f], theirs[f],
                "{name}: field {f}\nours: {mine}\nqemu: {theirs}"
            );
        }
    }
    // Snapshots are listed with the same names and IDs.
    let img = d.join("snap.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    ok("qemu-img", &["snapshot", "-c", "one", s(&img)]);
    let theirs = json(&ok("qemu-img", &["info", "--output=json", s(&img)]));
    let mine = json(&ours(&["info", "--output=json", s(&img)]));
    assert_eq!(mine["snapshots"][0]["name"], theirs["snapshots"][0]["name"]);
    assert_eq!(mine["snapshots"][0]["id"], theirs["snapshots"][0]["id"]);
    assert_eq!(
        mine["snapshots"][0]["date-sec"],
        theirs["snapshots"][0]["date-sec"]
    );
    // Human output mentions the essentials.
    let h = ours(&["info", s(&img)]);
    assert!(h.contains("file format: qcow2") && h.contains("one"), "{h}");
}

#[test]
fn map_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "4M"]);
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 1M 256k",
            "-c",
            "write -P 2 3M 64k",
            s(&base),
        ],
    );
    let img = d.join("m.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&img),
        ],
    );
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 100k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "write -c -P 3 2M 64k",
            "-c",
            "write -P 4 2560k 128k",
            s(&img),
        ],
    );
    for f in [&base, &img] {
        let theirs = json(&ok("qemu-img", &["map", "--output=json", s(f)]));
        let mine = json(&ours(&["map", "--output=json", s(f)]));
        assert_eq!(mine, theirs, "{}", f.display());
    }
}

#[test]
fn create_check_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.qcow2");
    ours(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=2,lazy_refcounts=on",
        s(&img),
        "10M",
    ]);
    let theirs = json(&ok("qemu-img", &["info", "--output=json", s(&img)]));
    assert_eq!(theirs["cluster-size"], 512);
    assert_eq!(theirs["format-specific"]["data"]["refcount-bits"], 2);
    assert_eq!(theirs["format-specific"]["data"]["lazy-refcounts"], true);
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 5 0 256k", s(&img)],
    );
    let mine = json(&ours(&["check", "--output=json", s(&img)]));
    let q = run("qemu-img", &["check", "--output=json", s(&img)]);
    assert_eq!(q.status.code(), Some(0));
    let theirs = json(&String::from_utf8_lossy(&q.stdout));
    for f in [
        "allocated-clusters",
        "total-clusters",
        "image-end-offset",
        "check-errors",
    ] {
        assert_eq!(mine[f], theirs[f], "{f}: ours {mine} qemu {theirs}");
    }
    // Leak a cluster: append one with refcount 1 by growing the file and
    // raising its refcount through qemu-io's view is not possible, so patch
    // the refcount block directly (2-bit refcounts, 4 per byte).
    let bytes = std::fs::read(&img).unwrap();
    let be64 = |o: usize| u64::from_be_bytes(bytes[o..o + 8].try_into().unwrap());
    let rt = be64(48) as usize;
    let rb = be64(rt) as usize;
    let c = bytes.len() / 512;
    assert!(
        c < 512 * 4,
        "cluster must be covered by the first refcount block"
    );
    let mut b2 = bytes.clone();
    b2[rb + c / 4] |= 1 << (2 * (c % 4));
    b2.extend_from_slice(&[0u8; 512]);
    std::fs::write(&img, &b2).unwrap();
    let o = run(
        env!("CARGO_BIN_EXE_virtkit-img"),
        &["check", "--output=json", s(&img)],
    );
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(json(&String::from_utf8_lossy(&o.stdout))["leaks"], 1);
    let q = run("qemu-img", &["check", s(&img)]);
    assert_eq!(q.status.code(), Some(3));
    ours(&["check", "-r", "leaks", s(&img)]);
    let q = run("qemu-img", &["check", s(&img)]);
    assert_eq!(
        q.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&q.stdout)
    );
}

#[test]
fn convert_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("in.raw");
    // Mixed data and zeroes, with a hole.
    let mut data = vec![0u8; 12 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        let blk = i / 65536;
        if blk % 3 != 0 {
            *b = (i / 4096 % 7) as u8 + blk as u8;
        }
    }
    data[5 << 20..7 << 20].fill(0);
    std::fs::write(&raw, &data).unwrap();
    for (opt, compress) in [
        ("cluster_size=65536", false),
        ("cluster_size=4096,refcount_bits=8", true),
        ("compression_type=zstd", true),
    ] {
        let q = d.join("out.qcow2");
        let mut args = vec![
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            opt,
            s(&raw),
            s(&q),
        ];
        if compress {
            args.insert(1, "-c");
        }
        ours(&args);
        ok("qemu-img", &["check", s(&q)]);
        ok(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(&q)],
        );
        let back = d.join("back.raw");
        ours(&["convert", "-p", "-O", "raw", s(&q), s(&back)]);
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{opt}: round trip differs"
        );
        let info = json(&ok("qemu-img", &["check", "--output=json", s(&q)]));
        if compress {
            assert!(info["compressed-clusters"].as_u64().unwrap() > 0, "{info}");
        }
        std::fs::remove_file(&q).unwrap();
    }
    // A qcow2 made by qemu converts to the same raw bytes as qemu-img's.
    let q = d.join("qemu.qcow2");
    ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&raw), s(&q)],
    );
    let back = d.join("back2.raw");
    ours(&["convert", "-f", "qcow2", "-O", "raw", s(&q), s(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
}

#[test]
fn bench_runs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("b.qcow2");
    ours(&["create", "-f", "qcow2", s(&img), "8M"]);
    let out = ours(&["bench", "-w", "-c", "512", "-d", "2", "--flush", s(&img)]);
    assert!(out.contains("IOPS"), "{out}");
    ours(&["bench", "-c", "512", "--random", s(&img)]);
    ok("qemu-img", &["check", s(&img)]);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let o = run(
        env!("CARGO_BIN_EXE_virtkit-img"),
        &["info", "/nonexistent/x.qcow2"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("virtkit-img:"));
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.qcow2");
    let o = run(
        env!("CARGO_BIN_EXE_virtkit-img"),
        &["create", "-o", "cluster_size=1000", s(&img), "1M"],
    );
    assert_eq!(o.status.code(), Some(1));
    let o = run(
        env!("CARGO_BIN_EXE_virtkit-img"),
        &["create", "-b", "base", s(&img), "1M"],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("-F"), "{o:?}");
}

/// `qemu-img snapshot -l` in UTC (virtkit-img prints UTC dates).
fn qemu_snapshot_list(img: &Path) -> String {
    let o = Command::new("qemu-img")
        .env("TZ", "UTC")
        .args(["snapshot", "-l", s(img)])
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn snapshot_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.qcow2");
    let p = s(&img);
    ours(&["create", "-f", "qcow2", p, "8M"]);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 1M", p]);
    ours(&["snapshot", "-c", "ours", p]);
    ok("qemu-img", &["snapshot", "-c", "theirs", p]);
    let list = ours(&["snapshot", "-l", p]);
    assert!(list.contains("\n1         ours "), "{list}");
    assert_eq!(list, qemu_snapshot_list(&img));
    let dup = run(
        env!("CARGO_BIN_EXE_virtkit-img"),
        &["snapshot", "-c", "ours", p],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let unknown = run(
        env!("CARGO_BIN_EXE_virtkit-img"),
        &["snapshot", "-d", "x", p],
    );
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no snapshot with id or name"));

    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x22 0 1M", p]);
    ours(&["snapshot", "-a", "ours", p]);
    ok("qemu-io", &["-f", "qcow2", "-c", "read -P 0x11 0 1M", p]);
    ours(&["snapshot", "-d", "2", p]);
    ours(&["snapshot", "-d", "ours", p]);
    assert_eq!(ours(&["snapshot", "-l", p]), "");
    ok("qemu-img", &["check", "-q", p]);
}
