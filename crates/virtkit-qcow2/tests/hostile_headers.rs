//! Hostile qcow2 headers (issue #19): offsets and sizes chosen to overflow
//! 64-bit arithmetic or to point outside the file are refused with an error
//! naming the bad field, never a panic. Self-contained (no qemu-img): the
//! images are made with `virtkit_qcow2::create` and patched, or built byte
//! by byte. The last test replays the fuzz corpus through the entry point of
//! `fuzz/fuzz_targets/qcow2_open_read.rs`.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use virtkit_qcow2::{
    create, BackingMode, Compat, CreateOptions, Header, OpenOptions, Qcow2, Qcow2Error,
};

/// The highest 64 KiB-aligned offset: passes the alignment checks, and
/// adding a table of a cluster or more to it overflows.
const TOP: u64 = !0xffff;

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

/// The 257-byte input of issue #19: a v2 header (64 KiB clusters, 1 MiB)
/// whose backing_file_offset is u64::MAX and backing_file_size 256. It is
/// also the seed `fuzz/corpus/qcow2_open_read/seed-backing-offset-overflow`.
fn backing_offset_overflow() -> Vec<u8> {
    let mut b = vec![0u8; 257];
    b[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut b, 4, 2);
    put64(&mut b, 8, u64::MAX);
    put32(&mut b, 16, 256);
    put32(&mut b, 20, 16);
    put64(&mut b, 24, 1 << 20);
    b
}

fn ro(backing: BackingMode) -> OpenOptions {
    OpenOptions {
        read_only: true,
        backing,
        ..Default::default()
    }
}

/// A fresh 1 MiB image (64 KiB clusters) in a temp folder.
fn image(compat: Compat) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("h.qcow2");
    let opts = CreateOptions {
        size: 1 << 20,
        compat,
        ..Default::default()
    };
    create(&img, &opts).unwrap();
    (dir, img)
}

fn patch(img: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// Open a fresh v3 image patched by `f`: it must fail, in every backing
/// mode and through the fuzz entry point, with the same error.
fn refused(compat: Compat, f: impl FnOnce(&Path)) -> Qcow2Error {
    let (dir, img) = image(compat);
    f(&img);
    let e = Qcow2::open(&img, ro(BackingMode::Ignore))
        .map(|_| ())
        .unwrap_err();
    for mode in [BackingMode::Deny, BackingMode::Follow] {
        let e2 = Qcow2::open(&img, ro(mode)).map(|_| ()).unwrap_err();
        assert_eq!(e.to_string(), e2.to_string());
    }
    let e2 = Qcow2::open(&img, OpenOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.to_string(), e2.to_string());
    let data = std::fs::read(&img).unwrap();
    let fz = virtkit_qcow2::testing::open_read(&dir.path().join("fuzz"), &data).unwrap();
    assert_eq!(e.to_string(), fz.to_string());
    e
}

#[test]
fn issue_19_backing_offset_overflow() {
    let data = backing_offset_overflow();
    assert_eq!(data.len(), 257);
    let want = "backing file offset 0xffffffffffffffff is invalid";
    let e = Header::parse(&data, 257).unwrap_err();
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                what: "backing file",
                offset: u64::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(want), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("backing-offset-overflow");
    std::fs::write(&img, &data).unwrap();
    for opts in [
        ro(BackingMode::Ignore),
        ro(BackingMode::Deny),
        ro(BackingMode::Follow),
        OpenOptions::default(),
    ] {
        let e = Qcow2::open(&img, opts).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    let e = virtkit_qcow2::testing::open_read(&dir.path().join("fuzz"), &data).unwrap();
    assert!(e.to_string().contains(want), "{e}");
}

#[test]
fn backing_name_outside_the_first_cluster_or_the_file() {
    let cases: [(u64, u32, &str); 5] = [
        // Past the end of this 257-byte file.
        (250, 100, "backing file offset 0xfa"),
        // Past the first cluster, however long the file.
        (65536, 8, "backing file offset 0x10000"),
        // On top of the fixed header fields.
        (8, 8, "overlap the header"),
        // Offset plus size wraps around.
        (u64::MAX - 3, 8, "overflows"),
        (u64::MAX - 3, 3, "runs past"),
    ];
    for (off, len, want) in cases {
        let mut data = backing_offset_overflow();
        put64(&mut data, 8, off);
        put32(&mut data, 16, len);
        let e = Header::parse(&data, 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                Qcow2Error::BadOffset {
                    what: "backing file",
                    ..
                }
            ),
            "{off:#x}+{len}: {e:?}"
        );
        assert!(e.to_string().contains(want), "{off:#x}+{len}: {e}");
    }
    // A size above QEMU's 1023-byte limit is named as such.
    let mut data = backing_offset_overflow();
    put32(&mut data, 16, u32::MAX);
    let e = Header::parse(&data, 257).unwrap_err();
    assert!(matches!(e, Qcow2Error::BadBackingName(_)), "{e:?}");
    assert!(
        e.to_string().contains("backing file size 4294967295"),
        "{e}"
    );
}

#[test]
fn l1_table_offset_overflow() {
    // An L1 table of one cluster (8192 entries) at the top of the offset space.
    let e = refused(Compat::V3, |p| {
        patch(p, 36, &0x2000u32.to_be_bytes());
        patch(p, 40, &TOP.to_be_bytes());
    });
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                what: "L1 table",
                offset: TOP,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("overflows"), "{e}");
}

#[test]
fn l1_size_huge() {
    let e = refused(Compat::V3, |p| patch(p, 36, &u32::MAX.to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::TableTooLarge {
                what: "L1 table",
                size: 0x7_ffff_fff8,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn refcount_table_offset_overflow() {
    let e = refused(Compat::V2, |p| patch(p, 48, &TOP.to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                what: "refcount table",
                offset: TOP,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("overflows"), "{e}");
}

#[test]
fn refcount_table_clusters_huge() {
    let e = refused(Compat::V3, |p| patch(p, 56, &u32::MAX.to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::TableTooLarge {
                what: "refcount table",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn snapshot_table_offset_at_the_top() {
    // Only the first 40-byte entry is checked at this stage, and an aligned
    // offset plus 40 does not wrap: this one is past the end of the file.
    let e = refused(Compat::V3, |p| {
        patch(p, 60, &1u32.to_be_bytes());
        patch(p, 64, &TOP.to_be_bytes());
    });
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                what: "snapshot table",
                offset: TOP,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("past the end of the file"), "{e}");
}

/// An image with one snapshot table entry (header `hd`, then `tail`) in a
/// cluster appended to the file.
fn with_snapshot_entry(p: &Path, hd: &[u8; 40], tail: &[u8]) {
    let len = std::fs::metadata(p).unwrap().len();
    let at = len.div_ceil(65536) * 65536;
    let mut c = vec![0u8; 65536];
    c[..40].copy_from_slice(hd);
    c[40..40 + tail.len()].copy_from_slice(tail);
    patch(p, at, &c);
    patch(p, 60, &1u32.to_be_bytes());
    patch(p, 64, &at.to_be_bytes());
}

#[test]
fn snapshot_entry_fields_overflow() {
    // The snapshot's own L1 table (64 KiB) wraps around the end of the
    // 64-bit offset space.
    let mut hd = [0u8; 40];
    put64(&mut hd, 0, TOP);
    put32(&mut hd, 8, 0x2000);
    hd[12..14].copy_from_slice(&1u16.to_be_bytes());
    hd[14..16].copy_from_slice(&1u16.to_be_bytes());
    let e = refused(Compat::V3, |p| with_snapshot_entry(p, &hd, b"1a"));
    assert!(matches!(e, Qcow2Error::BadSnapshot(_)), "{e:?}");
    assert!(e.to_string().contains("snapshot L1 table offset"), "{e}");
    // Its L1 table is absurdly large.
    let mut hd2 = hd;
    put64(&mut hd2, 0, 0);
    put32(&mut hd2, 8, u32::MAX);
    let e = refused(Compat::V3, |p| with_snapshot_entry(p, &hd2, b"1a"));
    assert!(e.to_string().contains("snapshot L1 table of"), "{e}");
    // Extra data size far past the 1 KiB sanity limit.
    let mut hd3 = hd;
    put32(&mut hd3, 36, u32::MAX);
    let e = refused(Compat::V3, |p| with_snapshot_entry(p, &hd3, b""));
    assert!(e.to_string().contains("extra data size"), "{e}");
    // Id and name longer than what is left of the file.
    let mut hd4 = hd;
    hd4[12..14].copy_from_slice(&u16::MAX.to_be_bytes());
    hd4[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let e = refused(Compat::V3, |p| with_snapshot_entry(p, &hd4, b""));
    assert!(e.to_string().contains("past the end of the file"), "{e}");
}

#[test]
fn header_extension_length_overflow() {
    // A v3 header made by create() is 112 bytes; extensions start there.
    for len in [u32::MAX, u32::MAX - 7, 65536] {
        let e = refused(Compat::V3, |p| {
            patch(p, 112, &0x1234_5678u32.to_be_bytes());
            patch(p, 116, &len.to_be_bytes());
        });
        assert!(matches!(e, Qcow2Error::BadExtension(_)), "{e:?}");
        assert!(
            e.to_string().contains(&format!("length {len} runs past")),
            "{e}"
        );
    }
    // One extension filling the rest of the first cluster: no room left
    // for the end marker.
    let e = refused(Compat::V3, |p| {
        patch(p, 112, &0x1234_5678u32.to_be_bytes());
        patch(p, 116, &(65536u32 - 120).to_be_bytes());
    });
    assert!(matches!(e, Qcow2Error::BadExtension(_)), "{e:?}");
    assert!(e.to_string().contains("no end-of-extensions marker"), "{e}");
    // More extensions than anyone needs.
    let e = refused(Compat::V3, |p| {
        let mut ext = Vec::new();
        for _ in 0..2000 {
            ext.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            ext.extend_from_slice(&0u32.to_be_bytes());
        }
        patch(p, 112, &ext);
    });
    assert!(e.to_string().contains("more than 1024 extensions"), "{e}");
}

#[test]
fn header_length_absurd() {
    for hl in [u32::MAX, 0xffff_fff8, 1 << 20, 0, 100] {
        let e = refused(Compat::V3, |p| patch(p, 100, &hl.to_be_bytes()));
        assert!(
            matches!(e, Qcow2Error::InvalidHeaderLength(x) if x == hl),
            "{hl:#x}: {e:?}"
        );
        assert!(e.to_string().contains("header_length"), "{e}");
    }
}

#[test]
fn v2_backing_name_right_after_the_header() {
    // Old v2 images keep the backing name at offset 72 with no extensions:
    // the extension area ends where the name starts (as in QEMU).
    let (_dir, img) = image(Compat::V2);
    patch(&img, 72, b"base.img");
    patch(&img, 8, &72u64.to_be_bytes());
    patch(&img, 16, &8u32.to_be_bytes());
    let q = Qcow2::open(&img, ro(BackingMode::Ignore)).unwrap();
    assert_eq!(q.header().backing_file.as_deref(), Some("base.img"));
    assert_eq!(q.header().backing_format, None);
    let e = Qcow2::open(&img, ro(BackingMode::Deny))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, Qcow2Error::BackingNotAllowed(_)), "{e:?}");
}

/// Every file of `fuzz/corpus/qcow2_open_read/` (the committed seeds, and
/// locally whatever the fuzzer found) goes through the fuzz target's entry
/// point without a panic.
#[test]
fn fuzz_corpus_replays_without_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/qcow2_open_read");
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for ent in std::fs::read_dir(&corpus).unwrap() {
        let p = ent.unwrap().path();
        if p.is_file() {
            inputs.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    // The committed seed stays the exact issue #19 input.
    let seed = corpus.join("seed-backing-offset-overflow");
    assert_eq!(std::fs::read(&seed).unwrap(), backing_offset_overflow());
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("input.qcow2");
    let mut panicked = Vec::new();
    for (name, data) in &inputs {
        if catch_unwind(AssertUnwindSafe(|| {
            virtkit_qcow2::testing::open_read(&scratch, data)
        }))
        .is_err()
        {
            panicked.push(name.clone());
        }
    }
    assert!(panicked.is_empty(), "panicked on: {panicked:?}");
}
