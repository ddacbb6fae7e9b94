//! Fuzz the virtio-net device model with arbitrary descriptor tables, ring
//! heads, features and frames: it must never panic or hang, and must never
//! read or write outside guest memory.
#![no_main]

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtkit_net::features::*;
use virtkit_net::net::Net;
use virtkit_net::testing::DriverQueue;
use virtkit_net::MacAddr;
use virtkit_virtio::{ActiveQueue, Interrupt, InterruptReason, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug)]
struct NoIrq;
impl Interrupt for NoIrq {
    fn signal(&self, _: InterruptReason) -> io::Result<()> {
        Ok(())
    }
}

fn descs(data: &[u8]) -> Vec<(u64, u32, u16, u16)> {
    data.chunks_exact(16)
        .take(32)
        .map(|c| {
            let addr = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()) % 0x12_0000;
            let len = u32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([c[12], c[13]]) & 0x7;
            let next = u16::from_le_bytes([c[14], c[15]]) % 40;
            (addr, len, flags, next)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, rest) = data.split_at(4);
    let split = (rest.len() / 3).min(512);
    let (tx_raw, rest) = rest.split_at(split);
    let (rx_raw, frame) = rest.split_at(split.min(rest.len()));
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]) else {
        return;
    };
    let Ok((dev, peer)) = UnixDatagram::pair() else {
        return;
    };
    let _ = dev.set_nonblocking(true);
    let _ = peer.set_nonblocking(true);
    let Ok(mut net) = Net::new(dev, MacAddr::default(), None) else {
        return;
    };
    let mut features = bit(VIRTIO_F_VERSION_1);
    for (i, b) in [
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ]
    .iter()
    .enumerate()
    {
        if ctl[0] & (1 << i) != 0 {
            features |= bit(*b);
        }
    }
    net.set_acked_features(features);
    let size = 1u16 << (ctl[1] % 6 + 1); // 2..=64
    let mut rxq = DriverQueue::new(&mem, GuestAddress(0), size);
    let mut txq = DriverQueue::new(&mem, GuestAddress(0x8000), size);
    let (Ok(e1), Ok(e2)) = (EventFd::new(0), EventFd::new(0)) else {
        return;
    };
    let queues = vec![
        ActiveQueue {
            queue: rxq.queue(),
            notify: e1,
        },
        ActiveQueue {
            queue: txq.queue(),
            notify: e2,
        },
    ];
    if net.activate(mem.clone(), Arc::new(NoIrq), queues).is_err() {
        return;
    }
    let tx = descs(tx_raw);
    let rx = descs(rx_raw);
    let heads = usize::from(ctl[2] % 8);
    for h in 0..heads {
        if !tx.is_empty() {
            txq.add_raw(&tx, (h as u16 * 3) % size);
        }
        if !rx.is_empty() {
            rxq.add_raw(&rx, (h as u16 * 5) % size);
        }
    }
    for _ in 0..usize::from(ctl[3] % 4) {
        let _ = peer.send(frame);
    }
    net.process_tx();
    net.process_rx();
    let _ = txq.take_used();
    let _ = rxq.take_used();
    net.reset();
});
