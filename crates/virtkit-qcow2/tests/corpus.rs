//! Broken images: each is rejected with a clear, typed error, without a
//! panic and without allocating memory in proportion to bogus sizes.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{BackingMode, OpenOptions, Qcow2, Qcow2Error};

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        ..Default::default()
    }
}

/// A small valid image with some data and a compressed cluster.
fn sample(dir: &Path) -> PathBuf {
    let img = dir.join("ok.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "4M"]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x21 0 128k", "write -c -P 0x22 1M 64k"],
    );
    img
}

fn u64_at(img: &Path, off: u64) -> u64 {
    let f = std::fs::File::open(img).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

fn broken(patch_fn: impl FnOnce(&Path)) -> Qcow2Error {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    patch_fn(&img);
    Qcow2::open(&img, ro()).map(|_| ()).unwrap_err()
}

#[test]
fn huge_l1_size() {
    let e = broken(|p| patch(p, 36, &0x7fff_ffffu32.to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::TableTooLarge {
                what: "L1 table",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn l1_past_end_and_unaligned() {
    let e = broken(|p| patch(p, 40, &(1u64 << 40).to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                what: "L1 table",
                ..
            }
        ),
        "{e}"
    );
    let e = broken(|p| patch(p, 40, &(3 * 65536 + 8u64).to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                why: "not cluster aligned",
                ..
            }
        ),
        "{e}"
    );
    let e = broken(|p| patch(p, 48, &(1u64 << 50).to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::BadOffset {
                what: "refcount table",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn overlapping_tables() {
    let e = broken(|p| {
        let rt = u64_at(p, 48);
        patch(p, 40, &rt.to_be_bytes());
    });
    assert!(matches!(e, Qcow2Error::Overlap(..)), "{e}");
    let e = broken(|p| patch(p, 48, &0u64.to_be_bytes()));
    assert!(matches!(e, Qcow2Error::Overlap(..)), "{e}");
}

#[test]
fn bad_cluster_bits_and_refcount_order() {
    for cb in [8u32, 22, 0, 63] {
        let e = broken(|p| patch(p, 20, &cb.to_be_bytes()));
        assert!(
            matches!(e, Qcow2Error::InvalidClusterBits(x) if x == cb),
            "{e}"
        );
    }
    let e = broken(|p| patch(p, 96, &7u32.to_be_bytes()));
    assert!(matches!(e, Qcow2Error::InvalidRefcountOrder(7)), "{e}");
}

#[test]
fn long_backing_name() {
    let e = broken(|p| {
        patch(p, 8, &512u64.to_be_bytes());
        patch(p, 16, &1024u32.to_be_bytes());
    });
    assert!(matches!(e, Qcow2Error::BadBackingName(_)), "{e}");
    assert!(e.to_string().contains("1023"), "{e}");
}

#[test]
fn image_naming_itself_as_backing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("self.qcow2");
    let p = img.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "self.qcow2",
        "-F",
        "qcow2",
        p,
        "1M",
    ]);
    let e = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            backing: BackingMode::Follow,
            ..Default::default()
        },
    )
    .unwrap_err();
    let Qcow2Error::Backing { source, .. } = &e else {
        panic!("{e}")
    };
    assert!(matches!(**source, Qcow2Error::BackingLoop(_)), "{e}");
    // A two-image loop too.
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        a.to_str().unwrap(),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        b.to_str().unwrap(),
        "1M",
    ]);
    let e = Qcow2::open(
        &a,
        OpenOptions {
            read_only: true,
            backing: BackingMode::Follow,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(format!("{e:?}").contains("BackingLoop"), "{e:?}");
}

/// Host offset of the L2 entry for guest offset `g` in a 64 KiB-cluster image.
fn l2_entry_pos(img: &Path, g: u64) -> u64 {
    let l1 = u64_at(img, 40);
    let l2 = u64_at(img, l1) & 0x00ff_ffff_ffff_fe00;
    l2 + (g / 65536) * 8
}

#[test]
fn compressed_length_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let pos = l2_entry_pos(&img, 1 << 20);
    let e = u64_at(&img, pos);
    assert!(e & (1 << 62) != 0, "expected a compressed cluster");
    // Claim the maximum number of sectors (bits 54..61 with 64 KiB clusters).
    patch(&img, pos, &(e | (0xff << 54)).to_be_bytes());
    let q = Qcow2::open(&img, ro()).unwrap();
    let mut b = vec![0u8; 65536];
    let err = q.read_at(&mut b, 1 << 20).unwrap_err();
    assert!(
        err.to_string().contains("past the end of the file"),
        "{err}"
    );
    // Offset past the end.
    let off_mask = (1u64 << 54) - 1;
    patch(&img, pos, &((e & !off_mask) | (1 << 40)).to_be_bytes());
    let q = Qcow2::open(&img, ro()).unwrap();
    assert!(q.read_at(&mut b, 1 << 20).is_err());
    // Other clusters still read.
    q.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0x21));
}

#[test]
fn l2_and_data_offsets_checked() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let l1 = u64_at(&img, 40);
    // L2 table past the end of the file.
    let orig = u64_at(&img, l1);
    patch(&img, l1, &((1u64 << 63) | (1 << 44)).to_be_bytes());
    let q = Qcow2::open(&img, ro()).unwrap();
    let mut b = vec![0u8; 512];
    assert!(matches!(
        q.read_at(&mut b, 0),
        Err(virtkit_block::BlockError::Corrupt(_))
    ));
    drop(q);
    // L2 table pointing at the L1 table.
    patch(&img, l1, &((1u64 << 63) | l1).to_be_bytes());
    let q = Qcow2::open(&img, ro()).unwrap();
    assert!(q.read_at(&mut b, 0).is_err());
    drop(q);
    patch(&img, l1, &orig.to_be_bytes());
    // An unaligned data cluster offset.
    let pos = l2_entry_pos(&img, 0);
    let e = u64_at(&img, pos);
    patch(&img, pos, &(e + 512).to_be_bytes());
    let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    assert!(q.read_at(&mut b, 0).is_err());
    assert!(q.write_at(&b, 0).is_err());
}

#[test]
fn misc_header_errors() {
    let e = broken(|p| patch(p, 0, b"QFI\xfa"));
    assert!(matches!(e, Qcow2Error::NotQcow2), "{e}");
    let e = broken(|p| patch(p, 4, &4u32.to_be_bytes()));
    assert!(matches!(e, Qcow2Error::UnsupportedVersion(4)), "{e}");
    let e = broken(|p| patch(p, 32, &1u32.to_be_bytes()));
    assert!(matches!(e, Qcow2Error::Encrypted(1)), "{e}");
    let e = broken(|p| patch(p, 100, &100u32.to_be_bytes()));
    assert!(
        matches!(
            e,
            Qcow2Error::InvalidHeaderLength(_) | Qcow2Error::BadExtension(_)
        ),
        "{e}"
    );
    // Extended L2 entries: readable, but not writable.
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    patch(&img, 72, &(1u64 << 4).to_be_bytes());
    let e = Qcow2::open(&img, OpenOptions::default()).unwrap_err();
    assert!(matches!(e, Qcow2Error::UnsupportedFeature(_)), "{e}");
    // External data files are refused.
    let e = broken(|p| patch(p, 72, &(1u64 << 2).to_be_bytes()));
    assert!(matches!(e, Qcow2Error::UnsupportedFeature(_)), "{e}");
    let e = broken(|p| patch(p, 24, &(1u64 << 61).to_be_bytes()));
    assert!(matches!(e, Qcow2Error::L1TooSmall { .. }), "{e}");
    let e = broken(|p| patch(p, 60, &100_000u32.to_be_bytes()));
    assert!(matches!(e, Qcow2Error::BadSnapshot(_)), "{e}");
    let e = broken(|p| {
        patch(p, 60, &1u32.to_be_bytes());
        patch(p, 64, &(1u64 << 45).to_be_bytes());
    });
    assert!(matches!(e, Qcow2Error::BadOffset { .. }), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, b"QFI\xfb\0\0\0\x03").unwrap();
    let e = Qcow2::open(&short, ro()).unwrap_err();
    assert!(matches!(e, Qcow2Error::Truncated(_)), "{e}");
    let e = Qcow2::open(dir.path().join("missing"), ro()).unwrap_err();
    assert!(matches!(e, Qcow2Error::Open { .. }), "{e}");
}

/// Random corruption of the metadata clusters: every open/read/write either
/// works or fails cleanly.
#[test]
fn random_metadata_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let pristine = std::fs::read(&img).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let meta_len = 5 * 65536usize;
    for _ in 0..300 {
        let mut bytes = pristine.clone();
        for _ in 0..1 + next() % 8 {
            let i = if next() % 2 == 0 {
                (next() % 128) as usize
            } else {
                (next() as usize) % meta_len
            };
            bytes[i] = next() as u8;
        }
        std::fs::write(&img, &bytes).unwrap();
        if let Ok(q) = Qcow2::open(
            &img,
            OpenOptions {
                repair_dirty: false,
                ..Default::default()
            },
        ) {
            let mut b = vec![0u8; 70000];
            let _ = q.read_at(&mut b, 0);
            let _ = q.read_at(&mut b, 1 << 20);
            let _ = q.write_at(&b[..4096], 2 << 20);
            let _ = q.discard(0, 65536);
            let _ = q.flush();
        }
    }
}

#[test]
fn huge_sparse_dirty_image_is_refused_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("huge.qcow2");
    virtkit_qcow2::create(
        &img,
        &virtkit_qcow2::CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..Default::default()
        },
    )
    .unwrap();
    // A 1 TiB sparse file of 512-byte clusters, marked dirty: rebuilding
    // refcounts would need a count per cluster (2^31 of them).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    patch(&img, 72, &1u64.to_be_bytes());
    let e = Qcow2::open(&img, OpenOptions::default()).unwrap_err();
    assert!(matches!(e, Qcow2Error::TooLarge(_)), "{e}");
    // Read-only opens still work (no rebuild needed to read).
    let q = Qcow2::open(&img, ro()).unwrap();
    let mut b = [1u8; 512];
    q.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [0u8; 512]);
}
