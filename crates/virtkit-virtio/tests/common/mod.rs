//! Driver-side helpers shared by the transport tests.
#![allow(dead_code, clippy::unwrap_used)]

use virtio_queue::mock::MockSplitQueue;
use virtkit_virtio::mmio::{status, MmioTransport};
use vm_memory::GuestMemoryMmap;

/// Read the 32-bit register at `off`.
pub fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

pub fn negotiate(t: &mut MmioTransport, features: u64) {
    wr(t, 0x70, status::ACKNOWLEDGE);
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x24, 0);
    wr(t, 0x20, features as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (features >> 32) as u32);
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

pub fn setup_queue(t: &mut MmioTransport, vq: &MockSplitQueue<'_, GuestMemoryMmap>, size: u16) {
    wr(t, 0x30, 0);
    wr(t, 0x38, u32::from(size));
    for (lo, addr) in [
        (0x80, vq.desc_table_addr()),
        (0x90, vq.avail_addr()),
        (0xa0, vq.used_addr()),
    ] {
        wr(t, lo, addr.0 as u32);
        wr(t, lo + 4, (addr.0 >> 32) as u32);
    }
    wr(t, 0x44, 1);
}
