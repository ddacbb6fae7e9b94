//! Several threads writing, reading, flushing and discarding at once: the
//! image ends up matching the model and passes qemu-img check.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{create, CreateOptions, OpenOptions, Qcow2};

#[test]
fn threads_share_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.qcow2");
    let size = 16u64 << 20;
    let bs = 4096u64;
    create(
        &img,
        &CreateOptions {
            size,
            cluster_size: 65536,
            ..Default::default()
        },
    )
    .unwrap();
    let q = Arc::new(
        Qcow2::open(
            &img,
            OpenOptions {
                l2_cache_bytes: 4 << 16,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let threads = 4u64;
    let mut hs = Vec::new();
    for t in 0..threads {
        let q = q.clone();
        hs.push(std::thread::spawn(move || {
            // Thread t owns blocks b with b % threads == t: neighbours in the
            // same 64 KiB cluster belong to other threads, so first writes to
            // a cluster race with each other.
            let blocks = size / bs;
            let mut x = 0x1234_5678u64 + t;
            for round in 0..3u64 {
                for i in 0..blocks / threads {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = ((i * 7919 + round * 31) % (blocks / threads)) * threads + t;
                    let val = (t as u8 + 1) * 16 + round as u8;
                    q.write_at(&vec![val; bs as usize], b * bs).unwrap();
                    if x % 97 == 0 {
                        q.flush().unwrap();
                    }
                    if x % 13 == 0 {
                        let mut r = vec![0u8; bs as usize];
                        q.read_at(&mut r, b * bs).unwrap();
                        assert!(r.iter().all(|&v| v == val));
                    }
                }
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    let mut model = vec![0u8; size as usize];
    for b in 0..size / bs {
        let t = b % threads;
        model[(b * bs) as usize..((b + 1) * bs) as usize].fill((t as u8 + 1) * 16 + 2);
    }
    assert_same(&read_all(&*q), &model, "after threads");
    drop(q);
    let (code, json) = qemu_check(&img);
    assert_eq!(code, 0, "{json}");
    assert_same(&qemu_raw(&img, "qcow2"), &model, "qemu view");
}
