//! Property tests: random interleavings on the receive path, and random
//! descriptor tables on both queues.

use super::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random interleavings of frames arriving, buffers posted and
    /// completions reaped: every frame arrives once, in order.
    #[test]
    fn rx_delivers_every_frame_in_order(
        ops in proptest::collection::vec((0u8..3, 1usize..24), 1..80),
        mrg in any::<bool>(),
    ) {
        let mut f = base_features();
        if mrg {
            f |= bit(VIRTIO_NET_F_MRG_RXBUF);
        }
        let mut r = rig(f, None);
        let mut sent = 0u32;
        let mut got = Vec::new();
        let reap = |r: &mut Rig, got: &mut Vec<u32>| {
            for (id, len) in r.rxq.take_used() {
                let b = r.read(BUF + u64::from(id) * 0x1000, len as usize);
                assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1);
                got.push(u32::from_le_bytes([b[12], b[13], b[14], b[15]]));
            }
        };
        let post = |r: &mut Rig, n: usize| {
            for _ in 0..n {
                // Descriptor i always gets buffer BUF + i * 4 KiB
                // (set before the device can look at it).
                let Some(head) = r.rxq.add_chain(&[(GuestAddress(0), 0, true)]) else {
                    break;
                };
                r.rxq.rewrite_single(head, BUF + u64::from(head) * 0x1000, 2048);
            }
            r.rx_kick.write(1).unwrap();
        };
        for (op, n) in ops {
            match op {
                0 => {
                    for _ in 0..n {
                        let mut fr = vec![0u8; 12];
                        fr.extend_from_slice(&sent.to_le_bytes());
                        fr.resize(60 + (sent as usize * 37) % 1400, 0xee);
                        if r.peer.send(&fr).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                }
                1 => post(&mut r, n),
                _ => reap(&mut r, &mut got),
            }
            r.run();
        }
        while got.len() < sent as usize {
            post(&mut r, 64);
            r.run();
            reap(&mut r, &mut got);
        }
        prop_assert_eq!(got, (0..sent).collect::<Vec<_>>());
        prop_assert_eq!(r.stats().rx_dropped, 0);
    }
}

fn desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (
        prop_oneof![
            Just(BUF),
            0..MEM_END + 0x1000,
            Just(MEM_END - 8),
            Just(u64::MAX - 4),
        ],
        prop_oneof![0u32..4096, Just(u32::MAX), Just(12u32)],
        0u16..8,
        0u16..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn random_descriptor_tables_never_panic(
        tx in proptest::collection::vec(desc(), 1..16),
        rx in proptest::collection::vec(desc(), 1..16),
        heads in proptest::collection::vec(0u16..20, 1..6),
        mrg in any::<bool>(),
    ) {
        let mut f = base_features();
        if mrg {
            f |= bit(VIRTIO_NET_F_MRG_RXBUF);
        }
        let mut r = rig(f, None);
        for &h in &heads {
            r.txq.add_raw(&tx, h);
            r.rxq.add_raw(&rx, h);
        }
        r.peer.send(&[0u8; 100]).unwrap();
        r.tx_kick.write(1).unwrap();
        r.rx_kick.write(1).unwrap();
        r.run();
        // Every TX head was consumed, with length 0.
        let used = r.txq.take_used();
        prop_assert!(used.len() <= heads.len());
        prop_assert!(used.iter().all(|&(_, l)| l == 0));
        for (_, len) in r.rxq.take_used() {
            prop_assert!(len as usize <= 100);
        }
    }
}
