//! Fuzz virtio-blk request parsing over arbitrary guest memory and descriptor
//! tables: the input is laid into guest memory at address 0, where the
//! avail ring (0x0, so the first bytes are its index), descriptor table
//! (0x40) and used ring (0x200) of a
//! 16-entry queue live, so descriptors, headers, segments and ring indices
//! are all fuzzer-controlled.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run virtio_blk -- -max_total_time=60`
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use virtkit_block::mem::MemBackend;
use virtkit_virtio::blk::{Block, BlockOptions};
use virtkit_virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]) else {
        return;
    };
    let n = data.len().min(1 << 20);
    if mem.write_slice(&data[..n], GuestAddress(0)).is_err() {
        return;
    }
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let disk = Arc::new(MemBackend::new(64 * 1024));
    let Ok(mut blk) = Block::new(
        disk,
        BlockOptions {
            read_only,
            serial: "fuzz".into(),
        },
    ) else {
        return;
    };
    blk.set_acked_features(blk.device_features());
    let Ok(mut q) = Queue::new(16) else { return };
    q.set_size(16);
    q.set_desc_table_address(Some(0x40), Some(0));
    q.set_avail_ring_address(Some(0), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    blk.process_queue(&mem, &mut q);
});
