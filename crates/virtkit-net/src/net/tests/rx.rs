//! The receive path: frames into one chain or merged buffers, small rings,
//! back-pressure, and interrupts that follow `used_event`.

use super::*;

#[test]
fn rx_frame_lands_in_one_chain_without_mrg() {
    let mut r = rig(base_features(), None);
    r.rxq
        .add_chain(&[
            (GuestAddress(BUF), 8, true),
            (GuestAddress(BUF + 0x1000), 2000, true),
        ])
        .unwrap();
    r.rx_kick.write(1).unwrap();
    r.run();
    let mut f = vec![0u8; 12];
    f[0] = VIRTIO_NET_HDR_F_DATA_VALID;
    f[10..12].copy_from_slice(&0xffffu16.to_le_bytes()); // device must overwrite
    f.extend(frame(600, 9));
    r.peer.send(&f).unwrap();
    r.run();
    let used = r.rxq.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1 as usize, f.len());
    // The header spans the two descriptors.
    let mut got = r.read(BUF, 8);
    got.extend(r.read(BUF + 0x1000, f.len() - 8));
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..], &f[12..]);
    assert!(r.irq.0[RX_QUEUE].load(Ordering::SeqCst) >= 1);
    assert_eq!(r.stats().rx_frames, 1);
}

#[test]
fn rx_merges_buffers_with_mrg_rxbuf() {
    let mut r = rig(base_features() | bit(VIRTIO_NET_F_MRG_RXBUF), None);
    // 1530 bytes are needed for MTU 1500: give 1024-byte buffers.
    for i in 0..8 {
        r.rxq
            .add_chain(&[(GuestAddress(BUF + i * 0x1000), 1024, true)])
            .unwrap();
    }
    r.rx_kick.write(1).unwrap();
    r.run();
    let mut f = vec![0u8; 12];
    f.extend(frame(1400, 1));
    r.peer.send(&f).unwrap();
    let small = [vec![0u8; 12], frame(50, 2)].concat();
    r.peer.send(&small).unwrap();
    r.run();
    let used = r.rxq.take_used();
    assert_eq!(used.len(), 3, "{used:?}");
    assert_eq!(used[0].1, 1024);
    assert_eq!(used[1].1 as usize, f.len() - 1024);
    assert_eq!(used[2].1 as usize, small.len());
    let first = r.read(BUF, 1024);
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 2);
    assert_eq!(&first[12..], &f[12..1024]);
    let second_id = used[1].0 as u64;
    let _ = second_id;
    let cont = r.read(BUF + 0x1000, f.len() - 1024);
    assert_eq!(&cont[..], &f[1024..]);
    let third = r.read(BUF + 0x2000, small.len());
    assert_eq!(u16::from_le_bytes([third[10], third[11]]), 1);
    assert_eq!(&third[12..], &small[12..]);
}

#[test]
fn small_ring_with_gso_and_mrg_still_receives() {
    let f = base_features()
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4);
    let mut r = rig(f, None);
    // 256 buffers of 128 bytes: 32 KiB, less than a 64 KiB segment.
    for i in 0..256u64 {
        r.rxq
            .add_chain(&[(GuestAddress(BUF + i * 128), 128, true)])
            .unwrap();
    }
    r.rx_kick.write(1).unwrap();
    r.run();
    let small = [vec![0u8; 12], frame(300, 6)].concat();
    r.peer.send(&small).unwrap();
    r.run();
    let used = r.rxq.take_used();
    assert_eq!(used.len(), 3, "300+12 bytes over 128-byte buffers");
    let total: u32 = used.iter().map(|u| u.1).sum();
    assert_eq!(total as usize, small.len());
    let hdr = r.read(BUF, 12);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
}

#[test]
fn rx_back_pressure_stops_polling_and_loses_nothing() {
    let mut r = rig(base_features(), None);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| [vec![0u8; 12], frame(100 + i, i as u8)].concat())
        .collect();
    for f in &frames {
        r.peer.send(f).unwrap();
    }
    // No buffers: the device must stall and then stay idle although
    // the backend is readable (no busy loop).
    r.run();
    assert!(r.net.lock().unwrap().rx_stalled());
    assert_eq!(r.em.run_with_timeout(50).unwrap(), 0);
    assert_eq!(r.stats().rx_frames, 0);
    assert_eq!(r.stats().rx_dropped, 0);
    // Two buffers now: two frames, then stall again.
    for i in 0..2 {
        r.rxq
            .add_chain(&[(GuestAddress(BUF + i * 0x1000), 2048, true)])
            .unwrap();
    }
    r.rx_kick.write(1).unwrap();
    r.run();
    assert_eq!(r.rxq.take_used().len(), 2);
    assert!(r.net.lock().unwrap().rx_stalled());
    assert_eq!(r.em.run_with_timeout(50).unwrap(), 0);
    for i in 0..3 {
        r.rxq
            .add_chain(&[(GuestAddress(BUF + 0x10000 + i * 0x1000), 2048, true)])
            .unwrap();
    }
    r.rx_kick.write(1).unwrap();
    r.run();
    let used = r.rxq.take_used();
    assert_eq!(used.len(), 3);
    // In order, intact.
    for (k, (_, len)) in used.iter().enumerate() {
        assert_eq!(*len as usize, frames[2 + k].len());
        let got = r.read(BUF + 0x10000 + k as u64 * 0x1000, *len as usize);
        assert_eq!(&got[12..], &frames[2 + k][12..]);
    }
    let s = r.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (5, 0));
}

#[test]
fn rx_interrupts_follow_used_event_and_merged_frames_publish_at_once() {
    let f = base_features() | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut r = rig(f, None);
    r.net.lock().unwrap().reset();
    r.run();
    // Fresh rings with EVENT_IDX on; the driver asks for an interrupt
    // only once the used index passes 2 (`used_event` = 2).
    let base = GuestAddress(0x2_0000);
    let mut rxq = DriverQueue::new(&r.mem, base, 64);
    let used_event = GuestAddress(base.0 + 0x1000 + 4 + 2 * 64);
    r.mem.write_obj(2u16.to_le(), used_event).unwrap();
    for i in 0..16u64 {
        rxq.add_chain(&[(GuestAddress(BUF + i * 0x1000), 1024, true)])
            .unwrap();
    }
    let txq = DriverQueue::new(&r.mem, GuestAddress(0x3_0000), 64);
    {
        let mut n = r.net.lock().unwrap();
        n.set_acked_features(f);
        let mut rx = rxq.queue();
        rx.set_event_idx(true);
        let mut tx = txq.queue();
        tx.set_event_idx(true);
        n.activate(
            r.mem.clone(),
            r.irq.clone(),
            active_queues(rx, tx, &r.rx_kick, &r.tx_kick),
        )
        .unwrap();
    }
    r.run();
    let irq = r.irq.clone();
    let irqs = || irq.0[RX_QUEUE].load(Ordering::SeqCst);
    let before = irqs();
    // A 2000-byte frame over 1024-byte buffers: two used entries, which
    // appear together (the used index jumps 0 -> 2).
    let big = [vec![0u8; 12], frame(2000 - 12, 3)].concat();
    r.peer.send(&big).unwrap();
    r.run();
    let used_idx = |r: &Rig| {
        let v: u16 = r.mem.read_obj(rxq_used_idx_addr(base, 64)).unwrap();
        u16::from_le(v)
    };
    assert_eq!(used_idx(&r), 2);
    assert_eq!(irqs(), before, "used_event 2 not passed yet: no interrupt");
    // One more entry: the index passes used_event, so an interrupt.
    r.peer
        .send(&[vec![0u8; 12], frame(100, 4)].concat())
        .unwrap();
    r.run();
    assert_eq!(used_idx(&r), 3);
    assert_eq!(irqs(), before + 1);
    let used = rxq.take_used();
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        [1024, 976, 112]
    );
    let hdr = r.read(BUF, 12);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
}

/// Where the used index of a [`DriverQueue`] of `size` at `base` lies.
fn rxq_used_idx_addr(base: GuestAddress, size: u64) -> GuestAddress {
    let avail = base.0 + (16 * size).next_multiple_of(4096);
    GuestAddress(avail + 4096 + (2 * size).next_multiple_of(4096) + 2)
}
