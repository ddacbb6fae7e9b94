//! The transmit path: frames reach the backend unchanged, and wait for it
//! when it is full.

use super::*;

#[test]
fn tx_frames_reach_the_backend_unchanged() {
    let mut r = rig(base_features(), None);
    let mut hdr = [0u8; 12];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    let payload = frame(1500, 3);
    // Header in its own descriptor, payload split across the region
    // boundary at 2 MiB.
    let h = BUF;
    let p = 0x20_0000 - 700;
    r.mem.write_slice(&hdr, GuestAddress(h)).unwrap();
    r.mem.write_slice(&payload, GuestAddress(p)).unwrap();
    r.txq
        .add_chain(&[(GuestAddress(h), 12, false), (GuestAddress(p), 1500, false)])
        .unwrap();
    r.tx_kick.write(1).unwrap();
    r.run();
    let mut got = vec![0u8; 4096];
    let n = r.peer.recv(&mut got).unwrap();
    assert_eq!(n, 1512);
    assert_eq!(&got[..12], &hdr);
    assert_eq!(&got[12..n], &payload[..]);
    assert_eq!(r.txq.take_used().len(), 1);
    assert!(r.irq.0[TX_QUEUE].load(Ordering::SeqCst) >= 1);
    let s = r.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (1, 1512));
}

#[test]
fn tx_back_pressure_waits_for_the_backend() {
    let mut r = rig(base_features(), None);
    // Fill the peer's receive queue until the device side would block.
    let big = vec![0u8; 60000];
    let mut queued = 0;
    {
        let n = r.net.lock().unwrap();
        while n.backend().send(&big).is_ok() {
            queued += 1;
        }
    }
    assert!(queued > 0);
    let f = [vec![0u8; 12], frame(200, 5)].concat();
    r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    r.txq
        .add_chain(&[(GuestAddress(BUF), f.len() as u32, false)])
        .unwrap();
    r.tx_kick.write(1).unwrap();
    r.run();
    assert!(r.txq.take_used().is_empty(), "chain must wait, not drop");
    assert_eq!(r.stats().tx_stalls, 1);
    // Drain the peer: the device is woken by EPOLLOUT and sends.
    let mut buf = vec![0u8; 65536];
    for _ in 0..queued {
        r.peer.recv(&mut buf).unwrap();
    }
    r.run();
    assert_eq!(r.txq.take_used().len(), 1);
    let n = r.peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    assert_eq!(r.stats().tx_dropped, 0);
}
