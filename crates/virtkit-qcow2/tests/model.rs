//! Model test: random sequences of write, discard, write_zeroes, flush and
//! reopen against an in-memory model, at several cluster sizes and refcount
//! widths; at the end our check must find the image clean.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use virtkit_block::BlockBackend;
use virtkit_qcow2::{check_image, create, Compat, CreateOptions, OpenOptions, Qcow2, Repair};

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, seed: u8 },
    Discard { off: u64, len: u64 },
    Zeroes { off: u64, len: u64 },
    Flush,
    Reopen,
}

const SIZE: u64 = 1 << 20;

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE / 512, 1..256u64).prop_map(|(o, l)| {
        let off = o * 512;
        (off, (l * 512).min(SIZE - off))
    });
    prop_oneof![
        6 => (range.clone(), any::<u8>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        2 => range.clone().prop_map(|(off, len)| Op::Discard { off, len }),
        2 => range.prop_map(|(off, len)| Op::Zeroes { off, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn config() -> impl Strategy<Value = (u64, u32, Compat)> {
    (
        prop::sample::select(vec![512u64, 4096, 65536]),
        prop::sample::select(vec![1u32, 2, 8, 16, 64]),
        prop::sample::select(vec![Compat::V2, Compat::V3]),
    )
        .prop_map(|(cs, rb, c)| (cs, if c == Compat::V2 { 16 } else { rb }, c))
}

fn opts() -> OpenOptions {
    // Tiny caches force evictions (and their write-back order) constantly.
    OpenOptions {
        l2_cache_bytes: 0,
        refcount_cache_bytes: 0,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn matches_model((cs, rb, compat) in config(), ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m.qcow2");
        create(&img, &CreateOptions { size: SIZE, cluster_size: cs, refcount_bits: rb, compat, ..Default::default() }).unwrap();
        let mut model = vec![0u8; SIZE as usize];
        let mut q = Qcow2::open(&img, opts()).unwrap();
        for op in &ops {
            match *op {
                Op::Write { off, len, seed } => {
                    let buf: Vec<u8> = (0..len).map(|i| seed.wrapping_add((i / 512) as u8) | 1).collect();
                    q.write_at(&buf, off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                }
                Op::Discard { off, len } => {
                    q.discard(off, len).unwrap();
                    let first = off.div_ceil(cs) * cs;
                    let end = if off + len == SIZE { SIZE } else { (off + len) / cs * cs };
                    if first < end {
                        model[first as usize..end as usize].fill(0);
                    }
                }
                Op::Zeroes { off, len } => {
                    q.write_zeroes(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                Op::Flush => q.flush().unwrap(),
                Op::Reopen => {
                    q.close().unwrap();
                    q = Qcow2::open(&img, opts()).unwrap();
                }
            }
        }
        let mut all = vec![0u8; SIZE as usize];
        q.read_at(&mut all, 0).unwrap();
        prop_assert!(all == model, "content differs from the model");
        q.close().unwrap();
        let q = Qcow2::open(&img, OpenOptions { read_only: true, ..Default::default() }).unwrap();
        let rep = check_image(&q, Repair::None).unwrap();
        prop_assert_eq!((rep.corruptions, rep.leaks, rep.check_errors), (0, 0, 0), "{:?}", rep.messages);
        q.read_at(&mut all, 0).unwrap();
        prop_assert!(all == model, "content differs after reopen");
    }
}
