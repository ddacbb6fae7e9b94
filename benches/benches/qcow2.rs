//! Criterion benchmarks for virtkit-qcow2 (and the raw backend as a
//! baseline): 4 KiB random reads and writes with L2 tables cached, 1 MiB
//! sequential reads and writes, and first-allocation writes.
//!
//! Run: `cargo bench -p virtkit-benches --bench qcow2`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtkit_block::{BlockBackend, RawBackend, RawOptions};
use virtkit_qcow2::{create, CreateOptions, OpenOptions, Qcow2};

const DISK: u64 = 256 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A qcow2 image of DISK bytes, fully allocated.
fn filled_qcow2(dir: &std::path::Path, cs: u64) -> Qcow2 {
    let p = dir.join(format!("full-{cs}.qcow2"));
    create(
        &p,
        &CreateOptions {
            size: DISK,
            cluster_size: cs,
            ..Default::default()
        },
    )
    .unwrap();
    let q = Qcow2::open(&p, OpenOptions::default()).unwrap();
    let chunk = vec![0x5au8; 4 << 20];
    for off in (0..DISK).step_by(chunk.len()) {
        q.write_at(&chunk, off).unwrap();
    }
    q.flush().unwrap();
    q
}

fn random_io(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let q = filled_qcow2(dir.path(), 65536);
    let rawp = dir.path().join("full.raw");
    std::fs::write(&rawp, vec![0x5au8; DISK as usize]).unwrap();
    let raw = RawBackend::open(&rawp, RawOptions::default()).unwrap();
    let mut g = c.benchmark_group("qcow2_4k_random");
    g.throughput(Throughput::Bytes(4096));
    let mut buf = vec![0u8; 4096];
    let mut r = Rng(1);
    g.bench_function("read_qcow2", |b| {
        b.iter(|| {
            let off = (r.next() % (DISK / 4096)) * 4096;
            q.read_at(&mut buf, off).unwrap();
            black_box(&buf);
        })
    });
    g.bench_function("read_raw", |b| {
        b.iter(|| {
            let off = (r.next() % (DISK / 4096)) * 4096;
            raw.read_at(&mut buf, off).unwrap();
            black_box(&buf);
        })
    });
    g.bench_function("write_qcow2_allocated", |b| {
        b.iter(|| {
            let off = (r.next() % (DISK / 4096)) * 4096;
            q.write_at(&buf, off).unwrap();
        })
    });
    g.bench_function("write_raw", |b| {
        b.iter(|| {
            let off = (r.next() % (DISK / 4096)) * 4096;
            raw.write_at(&buf, off).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("qcow2_1m_sequential");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut big = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    g.bench_function("read_qcow2", |b| {
        b.iter(|| {
            q.read_at(&mut big, pos).unwrap();
            pos = (pos + (1 << 20)) % DISK;
        })
    });
    g.bench_function("write_qcow2_allocated", |b| {
        b.iter(|| {
            q.write_at(&big, pos).unwrap();
            pos = (pos + (1 << 20)) % DISK;
        })
    });
    g.finish();
}

fn first_allocation(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let mut g = c.benchmark_group("qcow2_first_allocation");
    for (name, bs, cs) in [
        ("4k_in_64k_clusters", 4096u64, 65536u64),
        ("64k_in_64k_clusters", 65536, 65536),
        ("1m_in_64k_clusters", 1 << 20, 65536),
    ] {
        g.throughput(Throughput::Bytes(bs));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // Each request hits a fresh cluster: 4 KiB requests are spread
                // one per cluster; larger ones are sequential.
                let step = bs.max(cs);
                let per_image = DISK / step;
                let mut total = Duration::ZERO;
                let mut left = iters;
                let buf = vec![0x33u8; bs as usize];
                while left > 0 {
                    let p = dir.path().join("alloc.qcow2");
                    create(
                        &p,
                        &CreateOptions {
                            size: DISK,
                            cluster_size: cs,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    let q = Qcow2::open(&p, OpenOptions::default()).unwrap();
                    let n = left.min(per_image);
                    let t = Instant::now();
                    for i in 0..n {
                        q.write_at(&buf, i * step).unwrap();
                    }
                    total += t.elapsed();
                    left -= n;
                    drop(q);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = random_io, first_allocation
}
criterion_main!(benches);
