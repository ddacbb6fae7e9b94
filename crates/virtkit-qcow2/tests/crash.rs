//! Crash test: a child process writes to an image and is killed with
//! SIGKILL at random points. Afterwards `qemu-img check` must report the
//! image clean or with leaks only, and every write acknowledged before a
//! completed flush must read back.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{create, CreateOptions, OpenOptions, Qcow2};

const CHILD_ENV: &str = "VIRTKIT_QCOW2_CRASH_CHILD";
const SIZE: u64 = 32 << 20;
const BLOCK: u64 = 4096;

fn rng(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Write number `i` goes to block `perm[i]` (a permutation: no block is
/// written twice) and holds bytes derived from `i`.
fn plan(seed: u64) -> Vec<u64> {
    let n = SIZE / BLOCK;
    let mut perm: Vec<u64> = (0..n).collect();
    let mut r = rng(seed | 1);
    for i in (1..perm.len()).rev() {
        let j = (r() % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
}

fn content(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8 + 1; BLOCK as usize];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

const DISCARD: u64 = 65536;

enum Action {
    None,
    Flush,
    /// Discard the 64 KiB range at this offset.
    Discard(u64),
    /// Write zeroes over the 64 KiB range at this offset.
    Zero(u64),
}

/// What the writer does after write `i` (a pure function, so the parent
/// can replay it).
fn action(seed: u64, i: usize) -> Action {
    let mut r = rng((seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    r();
    let x = r();
    let off = (r() % (SIZE / DISCARD)) * DISCARD;
    match x % 32 {
        0 | 1 => Action::Flush,
        2 => Action::Discard(off),
        3 => Action::Zero(off),
        _ => Action::None,
    }
}

/// Child side: runs only when the parent sets the environment variable.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("VIRTKIT_QCOW2_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let perm = plan(seed);
    let q = Qcow2::open(
        &path,
        OpenOptions {
            l2_cache_bytes: 64 << 10,
            refcount_cache_bytes: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    for (i, &blk) in perm.iter().enumerate() {
        q.write_at(&content(i), blk * BLOCK).unwrap();
        match action(seed, i) {
            Action::Flush => {
                q.flush().unwrap();
                println!("FLUSHED {i}");
            }
            Action::Discard(off) => q.discard(off, DISCARD).unwrap(),
            Action::Zero(off) => q.write_zeroes(off, DISCARD).unwrap(),
            Action::None => {}
        }
    }
    println!("DONE");
}

/// Returns whether the child was killed mid-way after at least one flush.
fn one_round(seed: u64, kill_after: Duration, cs: u64) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.qcow2");
    create(
        &img,
        &CreateOptions {
            size: SIZE,
            cluster_size: cs,
            ..Default::default()
        },
    )
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &img)
        .env("VIRTKIT_QCOW2_CRASH_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        let mut done = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("FLUSHED ") {
                last = Some(n.parse::<usize>().unwrap());
            }
            done |= line == "DONE";
        }
        (last, done)
    });
    let start = Instant::now();
    while start.elapsed() < kill_after {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Child::kill sends SIGKILL.
    let _ = child.kill();
    child.wait().unwrap();
    let (flushed, done) = reader.join().unwrap();
    check_after_crash(&img, seed, flushed);
    flushed.is_some() && !done
}

fn check_after_crash(img: &Path, seed: u64, flushed: Option<usize>) {
    let (code, json) = qemu_check(img);
    assert!(
        code == 0 || code == 3,
        "seed {seed}: qemu-img check found corruption (exit {code}): {json}"
    );
    assert_eq!(json["corruptions"].as_u64().unwrap_or(0), 0, "{json}");
    let Some(last) = flushed else { return };
    let perm = plan(seed);
    let q = Qcow2::open(
        img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    // Blocks a discard or write-zeroes may have touched: data or zeroes.
    let mut maybe_zero = std::collections::HashSet::new();
    for i in 0..perm.len() {
        if let Action::Discard(off) | Action::Zero(off) = action(seed, i) {
            for b in off / BLOCK..(off + DISCARD) / BLOCK {
                maybe_zero.insert(b);
            }
        }
    }
    let mut b = vec![0u8; BLOCK as usize];
    for (i, &blk) in perm.iter().enumerate().take(last + 1) {
        q.read_at(&mut b, blk * BLOCK).unwrap();
        if maybe_zero.contains(&blk) {
            assert!(
                b == content(i) || b.iter().all(|&x| x == 0),
                "seed {seed}: block {blk} garbled"
            );
        } else {
            assert!(
                b == content(i),
                "seed {seed}: write {i} (flushed by {last}) lost"
            );
        }
    }
    // Writes after the last flush: each block holds its data or zeroes.
    for (i, &blk) in perm.iter().enumerate().skip(last + 1).take(2000) {
        q.read_at(&mut b, blk * BLOCK).unwrap();
        assert!(
            b == content(i) || b.iter().all(|&x| x == 0),
            "seed {seed}: block {blk} garbled"
        );
    }
}

#[test]
fn kill_9_leaves_no_corruption() {
    let mut r = rng(0x5eed);
    let mut mid_way = 0;
    for round in 0..8u64 {
        let cs = [4096u64, 65536][round as usize % 2];
        let ms = 20 + r() % 400;
        mid_way += usize::from(one_round(round + 1, Duration::from_millis(ms), cs));
    }
    assert!(
        mid_way >= 3,
        "only {mid_way} of 8 rounds killed the writer mid-way"
    );
}
