//! Images made by qemu-img and qemu-io, read back by us byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{BackingMode, OpenOptions, Qcow2, Qcow2Error};

fn follow() -> OpenOptions {
    OpenOptions {
        read_only: true,
        backing: BackingMode::Follow,
        ..Default::default()
    }
}

/// Write a mix of patterns, zeroes, compressed clusters and discards with
/// qemu-io, then compare our reading with qemu-img's.
fn check_variant(opts: &str, size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        p,
        &size.to_string(),
    ]);
    let cs: u64 = opts
        .split(',')
        .find_map(|kv| kv.strip_prefix("cluster_size="))
        .map_or(65536, |v| v.parse().unwrap());
    let c = |n: u64| (n * cs).to_string();
    let v2 = opts.contains("compat=0.10");
    let mut cmds = vec![
        format!("write -P 0xab 0 {}", cs * 3 + 1000),
        format!("write -P 0x11 {} 4096", size / 2 + 512),
        format!("write -c -P 0x5c {} {}", c(8), c(2)),
        format!("write -P 0x77 {} {}", size - cs, cs),
        format!("write -P 0x33 {} 512", c(11)),
    ];
    if !v2 {
        cmds.push(format!("write -z {} {}", c(1), c(1)));
    }
    cmds.push(format!("discard {} {}", c(2), c(1)));
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&img, "qcow2", &cmds);
    let theirs = qemu_raw(&img, "qcow2");
    let q = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(q.size(), size);
    let ours = read_all(&q);
    assert_same(&ours, &theirs, opts);
}

#[test]
fn qemu_images_cluster_sizes_and_refcount_widths() {
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for rb in [1, 16, 64] {
            let size = if cs == 2 << 20 { 64 << 20 } else { 8 << 20 };
            check_variant(&format!("cluster_size={cs},refcount_bits={rb}"), size);
        }
    }
}

#[test]
fn qemu_images_compat_lazy_zstd() {
    check_variant("compat=0.10", 8 << 20);
    check_variant("compat=0.10,cluster_size=4096", 8 << 20);
    check_variant("lazy_refcounts=on", 8 << 20);
    check_variant("compression_type=zstd", 8 << 20);
    check_variant(
        "compression_type=zstd,cluster_size=4096,refcount_bits=4",
        8 << 20,
    );
}

#[test]
fn backing_chain_qcow2_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", base.to_str().unwrap(), "6M"]);
    qemu_io(&base, "raw", &["write -P 0x01 0 6M"]);
    let mid = d.join("mid.qcow2");
    // Relative names: resolved against the image's folder, not our cwd.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        mid.to_str().unwrap(),
        "8M",
    ]);
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0x02 64k 64k",
            "write -P 0x03 5M 2M",
            "write -z 2M 64k",
        ],
    );
    let top = d.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
        "8M",
    ]);
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0x04 100k 10k",
            "write -c -P 0x05 1M 64k",
            "write -z 5M 4k",
        ],
    );
    let theirs = qemu_raw(&top, "qcow2");
    let q = Qcow2::open(&top, follow()).unwrap();
    assert_same(&read_all(&q), &theirs, "3-level chain");
    assert_eq!(q.backing_path().unwrap(), d.join("mid.qcow2"));

    // Backing files are opt-in.
    let e = Qcow2::open(
        &top,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Qcow2Error::BackingNotAllowed(ref n) if n == "mid.qcow2"),
        "{e}"
    );
    // Ignore: unallocated reads as zeroes.
    let q = Qcow2::open(
        &top,
        OpenOptions {
            read_only: true,
            backing: BackingMode::Ignore,
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = vec![1u8; 4096];
    q.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // A missing backing file is an error naming it, not a panic.
    std::fs::remove_file(&base).unwrap();
    let e = Qcow2::open(&top, follow()).unwrap_err();
    assert!(matches!(e, Qcow2Error::Backing { .. }), "{e}");
    assert!(e.to_string().contains("mid.qcow2"), "{e}");
}

#[test]
fn backing_without_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]);
    let top = dir.path().join("t.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    // Strip the backing-format extension by rewriting it as an unknown one.
    let mut bytes = std::fs::read(&top).unwrap();
    let pos = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .unwrap();
    bytes[pos..pos + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&top, bytes).unwrap();
    let e = Qcow2::open(&top, follow()).unwrap_err();
    let Qcow2Error::Backing { source, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(**source, Qcow2Error::BackingFormatMissing(_)),
        "{e}"
    );
}

#[test]
fn snapshots_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, "4M"]);
    qemu_io(&img, "qcow2", &["write -P 0x61 0 1M"]);
    qemu_img(&["snapshot", "-c", "first", p]);
    qemu_io(&img, "qcow2", &["write -P 0x62 512k 1M"]);
    qemu_img(&["snapshot", "-c", "second", p]);
    let q = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<&str> = q.snapshots().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_same(&read_all(&q), &qemu_raw(&img, "qcow2"), "active layer");
}

#[test]
fn extended_l2_images_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    let base_data: Vec<u8> = (0..(4u64 << 20)).map(|i| (i / 777) as u8 | 0x80).collect();
    std::fs::write(&base, &base_data).unwrap();
    for (opts, backing) in [
        ("extended_l2=on", false),
        ("extended_l2=on,cluster_size=32k", true),
        (
            "extended_l2=on,compression_type=zstd,cluster_size=2M",
            false,
        ),
    ] {
        let img = d.join("x.qcow2");
        let mut args = vec!["create", "-q", "-f", "qcow2", "-o", opts];
        if backing {
            args.extend(["-b", "base.raw", "-F", "raw"]);
        }
        let p = img.to_str().unwrap();
        args.extend([p, "4M"]);
        qemu_img(&args);
        qemu_io(
            &img,
            "qcow2",
            &[
                "write -P 0x31 1k 3k",
                "write -P 0x32 70k 6k",
                "write -z 72k 2k",
                "write -P 0x33 2050k 700k",
                "write -z 3M 64k",
            ],
        );
        if !opts.contains("2M") {
            qemu_io(&img, "qcow2", &["write -c -P 0x34 1M 64k"]);
        }
        let theirs = qemu_raw(&img, "qcow2");
        let q = Qcow2::open(&img, follow()).unwrap();
        assert!(q.header().extended_l2());
        assert_same(&read_all(&q), &theirs, opts);
        let rep = virtkit_qcow2::check_image(&q, virtkit_qcow2::Repair::None).unwrap();
        assert_eq!(
            (rep.corruptions, rep.leaks),
            (0, 0),
            "{opts}: {:?}",
            rep.messages
        );
        drop(q);
        // Writing extended-L2 images is refused, clearly.
        let e = Qcow2::open(
            &img,
            OpenOptions {
                backing: BackingMode::Follow,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, Qcow2Error::UnsupportedFeature(_)), "{e}");
        std::fs::remove_file(&img).unwrap();
    }
}
