//! Images we write pass `qemu-img check` and match a model byte for byte
//! according to qemu-img.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{
    check_image, create, BackingMode, Compat, CompressionType, CreateOptions, ImageFormat,
    OpenOptions, Qcow2, Repair,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random writes, discards and write-zeroes applied to `disk` and `model`.
fn scribble(disk: &dyn BlockBackend, model: &mut [u8], cs: u64, seed: u64, ops: usize) {
    let size = model.len() as u64;
    let mut r = Rng(seed);
    for i in 0..ops {
        let off = r.below(size / 512) * 512;
        let len = (1 + r.below(3 * cs / 512 + 8)) * 512;
        let len = len.min(size - off);
        match r.below(10) {
            0 => {
                disk.discard(off, len).unwrap();
                // Whole clusters read as zeroes afterwards; partial ones keep data.
                let first = off.div_ceil(cs) * cs;
                let end = if off + len == size {
                    size
                } else {
                    (off + len) / cs * cs
                };
                if first < end {
                    model[first as usize..end as usize].fill(0);
                }
            }
            1 => {
                disk.write_zeroes(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            2 => disk.flush().unwrap(),
            _ => {
                let buf: Vec<u8> = (0..len)
                    .map(|j| (i as u64 * 7 + j / 512) as u8 | 1)
                    .collect();
                disk.write_at(&buf, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
        }
    }
}

fn verify_with_qemu(img: &Path, model: &[u8], what: &str) {
    let (code, json) = qemu_check(img);
    assert_eq!(code, 0, "{what}: qemu-img check: {json}");
    assert_same(&qemu_raw(img, "qcow2"), model, what);
    // And qemu-img compare against a raw reference.
    let raw = img.with_extension("ref");
    std::fs::write(&raw, model).unwrap();
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
}

#[test]
fn our_images_pass_qemu_check() {
    let configs = [
        (512u64, 1u32, Compat::V3),
        (512, 64, Compat::V3),
        (4096, 2, Compat::V3),
        (4096, 16, Compat::V2),
        (65536, 16, Compat::V3),
        (65536, 4, Compat::V3),
        (65536, 8, Compat::V2),
        (2 << 20, 32, Compat::V3),
    ];
    for (cs, rb, compat) in configs {
        if compat == Compat::V2 && rb != 16 {
            continue;
        }
        let what = format!("cluster {cs} refcount {rb} {compat:?}");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("w.qcow2");
        let size = if cs == 2 << 20 { 40 << 20 } else { 6 << 20 };
        create(
            &img,
            &CreateOptions {
                size,
                cluster_size: cs,
                refcount_bits: rb,
                compat,
                ..Default::default()
            },
        )
        .unwrap();
        let mut model = vec![0u8; size as usize];
        {
            let q = Qcow2::open(
                &img,
                OpenOptions {
                    l2_cache_bytes: 8 * cs as usize,
                    refcount_cache_bytes: 4 * cs as usize,
                    ..Default::default()
                },
            )
            .unwrap();
            scribble(&q, &mut model, cs, cs + u64::from(rb), 150);
            assert_same(&read_all(&q), &model, &what);
            q.close().unwrap();
        }
        verify_with_qemu(&img, &model, &what);
        let q = Qcow2::open(
            &img,
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let rep = check_image(&q, Repair::None).unwrap();
        assert_eq!(
            (rep.corruptions, rep.leaks),
            (0, 0),
            "{what}: {:?}",
            rep.messages
        );
        assert_same(&read_all(&q), &model, &what);
    }
}

#[test]
fn refcount_table_grows() {
    // 512-byte clusters with 64-bit refcounts: 64 clusters per refcount
    // block, so a few MiB of data needs many blocks and a bigger table.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("g.qcow2");
    let size = 24u64 << 20;
    create(
        &img,
        &CreateOptions {
            size,
            cluster_size: 512,
            refcount_bits: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = vec![0u8; size as usize];
    {
        let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
        let before = q.header().refcount_table_clusters;
        let data: Vec<u8> = (0..size).map(|i| (i / 4096) as u8 | 1).collect();
        q.write_at(&data, 0).unwrap();
        model.copy_from_slice(&data);
        q.close().unwrap();
        let q = Qcow2::open(
            &img,
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(q.header().refcount_table_clusters > before);
    }
    verify_with_qemu(&img, &model, "growth");
}

#[test]
fn cow_over_backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    let size = 4u64 << 20;
    let base_data: Vec<u8> = (0..size).map(|i| (i / 1000) as u8).collect();
    std::fs::write(&base, &base_data).unwrap();
    let mid = d.join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "base.raw",
        "-F",
        "raw",
        mid.to_str().unwrap(),
    ]);
    qemu_io(&mid, "qcow2", &["write -P 0x42 8k 8k"]);
    let top = d.join("top.qcow2");
    create(
        &top,
        &CreateOptions {
            size,
            cluster_size: 65536,
            backing: Some(("mid.qcow2".into(), ImageFormat::Qcow2)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = qemu_raw(&mid, "qcow2");
    {
        let q = Qcow2::open(
            &top,
            OpenOptions {
                backing: BackingMode::Follow,
                ..Default::default()
            },
        )
        .unwrap();
        assert_same(&read_all(&q), &model, "before writes");
        scribble(&q, &mut model, 65536, 99, 120);
        q.close().unwrap();
    }
    let (code, json) = qemu_check(&top);
    assert_eq!(code, 0, "{json}");
    assert_same(&qemu_raw(&top, "qcow2"), &model, "COW chain");
    // Same image, v2 (write_zeroes must write real zeroes, discard is a no-op).
    let top2 = d.join("top2.qcow2");
    create(
        &top2,
        &CreateOptions {
            size,
            compat: Compat::V2,
            backing: Some((base.to_str().unwrap().into(), ImageFormat::Raw)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = base_data.clone();
    {
        let q = Qcow2::open(
            &top2,
            OpenOptions {
                backing: BackingMode::Follow,
                ..Default::default()
            },
        )
        .unwrap();
        let mut r = Rng(5);
        for _ in 0..40 {
            let off = r.below(size / 512) * 512;
            let len = (1 + r.below(300)) * 512;
            let len = len.min(size - off);
            if r.below(2) == 0 {
                q.write_zeroes(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            } else {
                q.discard(off, len).unwrap();
            }
        }
        assert_same(&read_all(&q), &model, "v2 over raw");
    }
    let (code, json) = qemu_check(&top2);
    assert_eq!(code, 0, "{json}");
    assert_same(&qemu_raw(&top2, "qcow2"), &model, "v2 over raw (qemu)");
}

#[test]
fn snapshots_survive_our_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p,
        "4M",
    ]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x61 0 2M", "write -c -P 0x63 3M 64k"],
    );
    qemu_img(&["snapshot", "-c", "first", p]);
    let snap = qemu_raw(&img, "qcow2");
    let mut model = snap.clone();
    {
        let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
        scribble(&q, &mut model, 4096, 3, 200);
        q.close().unwrap();
    }
    let (code, json) = qemu_check(&img);
    assert_eq!(code, 0, "{json}");
    assert_same(&qemu_raw(&img, "qcow2"), &model, "active layer");
    let out = dir.path().join("snap.raw");
    qemu_img(&[
        "convert",
        "-l",
        "snapshot.name=first",
        "-O",
        "raw",
        p,
        out.to_str().unwrap(),
    ]);
    assert_same(&std::fs::read(out).unwrap(), &snap, "snapshot");
}

#[test]
fn dirty_image_refcounts_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("l.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        p,
        "8M",
    ]);
    // qemu-io's abort leaves the dirty bit set and refcounts stale.
    let _ = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x7a 0 3M", "-c", "abort", p],
    );
    let q = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(q.is_dirty(), "qemu-io abort should leave the dirty bit");
    let content = read_all(&q);
    drop(q);
    {
        let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
        assert!(!q.is_dirty());
        q.write_at(&[0x11; 4096], 5 << 20).unwrap();
        assert!(q.is_dirty(), "lazy refcounts: dirty while writing");
        q.close().unwrap();
    }
    let mut model = content;
    model[5 << 20..(5 << 20) + 4096].fill(0x11);
    verify_with_qemu(&img, &model, "after rebuild");
    let q = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!q.is_dirty());
}

fn set_header_u64(img: &Path, off: u64, v: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&v.to_be_bytes(), off).unwrap();
}

#[test]
fn feature_bits() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("f.qcow2");
    create(
        &img,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    // Corrupt bit: opened read-only.
    set_header_u64(&img, 72, 2);
    let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    assert!(q.is_read_only());
    assert!(matches!(
        q.write_at(&[1], 0),
        Err(virtkit_block::BlockError::ReadOnly)
    ));
    drop(q);
    // Autoclear bits are cleared when opened for writing, kept read-only.
    set_header_u64(&img, 72, 0);
    set_header_u64(&img, 88, 0b101);
    drop(
        Qcow2::open(
            &img,
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(header_u64(&img, 88), 0b101);
    drop(Qcow2::open(&img, OpenOptions::default()).unwrap());
    assert_eq!(header_u64(&img, 88), 0);
    // Unknown incompatible bits are refused.
    set_header_u64(&img, 72, 1 << 9);
    let e = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("unknown incompatible feature"),
        "{e}"
    );
}

#[test]
fn header_extensions_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, "2M"]);
    let before = std::fs::read(&img).unwrap()[104..4096].to_vec();
    assert!(
        before.windows(4).any(|w| w == [0x68, 0x03, 0xf8, 0x57]),
        "feature table"
    );
    {
        let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
        q.write_at(&vec![9u8; 1 << 20], 0).unwrap();
        q.close().unwrap();
    }
    let after = std::fs::read(&img).unwrap()[104..4096].to_vec();
    assert_eq!(before, after);
}

#[test]
fn leaks_reported_and_repaired_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("k.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, "4M"]);
    qemu_io(&img, "qcow2", &["write -P 1 0 128k"]);
    // Leak two clusters: give them refcount 1 with nothing pointing at them.
    let len = std::fs::metadata(&img).unwrap().len();
    let rt = header_u64(&img, 48);
    let rb = header_u64(&img, rt as usize);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        let c = len / 65536;
        f.write_all_at(&[0, 1, 0, 1], rb + 2 * c).unwrap();
        f.set_len(len + 2 * 65536).unwrap();
    }
    let (code, json) = qemu_check(&img);
    assert_eq!(code, 3, "{json}");
    assert_eq!(json["leaks"], 2);
    let q = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let rep = check_image(&q, Repair::None).unwrap();
    assert_eq!((rep.leaks, rep.corruptions, rep.exit_code()), (2, 0, 3));
    assert_eq!(json["allocated-clusters"], rep.allocated_clusters);
    assert_eq!(json["total-clusters"], rep.total_clusters);
    assert_eq!(json["image-end-offset"], rep.image_end_offset);
    drop(q);
    let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    let rep = check_image(&q, Repair::Leaks).unwrap();
    assert_eq!(rep.leaks_fixed, 2);
    drop(q);
    let (code, json) = qemu_check(&img);
    assert_eq!(code, 0, "{json}");
}

#[test]
fn compressed_writes_read_by_qemu() {
    for ct in [CompressionType::Zlib, CompressionType::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("c.qcow2");
        let size = 2u64 << 20;
        create(
            &img,
            &CreateOptions {
                size,
                cluster_size: 4096,
                compression: ct,
                ..Default::default()
            },
        )
        .unwrap();
        let mut model = vec![0u8; size as usize];
        {
            let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
            for c in 0..(size / 4096) {
                if c % 3 == 0 {
                    continue;
                }
                let data: Vec<u8> = (0..4096u64).map(|i| ((i / 64) ^ c) as u8).collect();
                q.write_compressed(&data, c * 4096).unwrap();
                model[(c * 4096) as usize..((c + 1) * 4096) as usize].copy_from_slice(&data);
            }
            // Overwrite parts of compressed clusters (COW out of compression).
            q.write_at(&[0xee; 1000], 4096 + 100).unwrap();
            model[4196..5196].fill(0xee);
            q.close().unwrap();
        }
        let (code, json) = qemu_check(&img);
        assert_eq!(code, 0, "{ct:?}: {json}");
        assert!(
            json["compressed-clusters"].as_u64().unwrap() > 100,
            "{json}"
        );
        assert_same(&qemu_raw(&img, "qcow2"), &model, ct.name());
    }
}
