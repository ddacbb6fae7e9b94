//! `read_volatile_at` (data straight into memory) returns what `read_at` returns,
//! across allocated, zero, unallocated and backing-file clusters.
#![allow(clippy::unwrap_used)]

use virtkit_block::BlockBackend;
use virtkit_qcow2::{create, BackingMode, CreateOptions, ImageFormat, OpenOptions, Qcow2};
use vm_memory::VolatileSlice;

#[test]
fn volatile_reads_match_plain_reads() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let size = 4 << 20;
    create(
        &base,
        &CreateOptions {
            size,
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let b = Qcow2::open(&base, OpenOptions::default()).unwrap();
    b.write_at(&vec![0xbb; 64 * 1024], 1 << 20).unwrap();
    b.flush().unwrap();
    drop(b);
    create(
        &top,
        &CreateOptions {
            size,
            cluster_size: 4096,
            backing: Some(("base.qcow2".into(), ImageFormat::Qcow2)),
            ..Default::default()
        },
    )
    .unwrap();
    let img = Qcow2::open(
        &top,
        OpenOptions {
            backing: BackingMode::Follow,
            ..Default::default()
        },
    )
    .unwrap();
    let pattern: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    img.write_at(&pattern, 12_345).unwrap();
    img.write_at(&pattern[..70_000], (1 << 20) + 8192).unwrap();
    img.write_zeroes(3 << 20, 64 * 1024).unwrap();
    for (off, len) in [
        (0u64, 4096usize),
        (12_000, 210_000),
        ((1 << 20) - 1000, 100_000),
        ((3 << 20) - 512, 70_000),
        (size - 8192, 8192),
    ] {
        let mut plain = vec![0u8; len];
        img.read_at(&mut plain, off).unwrap();
        let mut mem = vec![0x5au8; len];
        img.read_volatile_at(&VolatileSlice::from(&mut mem[..]), off)
            .unwrap();
        assert_eq!(mem, plain, "read at {off} of {len}");
    }
    let mut past = vec![0u8; 4096];
    assert!(img
        .read_volatile_at(&VolatileSlice::from(&mut past[..]), size - 1024)
        .is_err());
}
