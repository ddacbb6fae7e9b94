//! Test and fuzzing entry points (feature `test-utils`).
//!
//! The fuzz targets in `fuzz/` call these functions, and ordinary tests
//! replay every committed corpus input through them, so an input that once
//! crashed or hung stays covered on stable Rust.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtkit_block::mem::MemBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::blk::{Block, BlockOptions};
use crate::device::VirtioDevice;
use crate::queue::DeviceQueue;

/// Guest memory of the [`blk_queue`] harness.
pub const BLK_FUZZ_MEM: usize = 1 << 20;

/// Where [`blk_queue`] lays its input: the avail ring's address. (Not 0:
/// virtio-queue takes an avail ring at 0 for a queue that was never set up.)
pub const BLK_FUZZ_BASE: u64 = 0x1000;

/// virtio-blk over arbitrary guest memory: `data` is laid into guest memory
/// at [`BLK_FUZZ_BASE`], where the avail ring (+0x0, so the first bytes are
/// its flags and index), the descriptor table (+0x40) and the used ring
/// (+0x200) of a 16-entry queue live, so descriptors, headers, segments and
/// ring indices are all input-controlled. The first byte's low bit makes the
/// disk read-only. Returns what the device did; it must never panic or hang.
pub fn blk_queue(data: &[u8]) -> Option<crate::blk::QueueRun> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), BLK_FUZZ_MEM)]).ok()?;
    let n = data.len().min(BLK_FUZZ_MEM - BLK_FUZZ_BASE as usize);
    mem.write_slice(&data[..n], GuestAddress(BLK_FUZZ_BASE))
        .ok()?;
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let disk = Arc::new(MemBackend::new(64 * 1024));
    let mut blk = Block::new(
        disk,
        BlockOptions {
            read_only,
            serial: "fuzz".into(),
        },
    )
    .ok()?;
    blk.set_acked_features(blk.device_features());
    let mut q = Queue::new(16).ok()?;
    q.set_size(16);
    let base = BLK_FUZZ_BASE as u32;
    q.set_desc_table_address(Some(base + 0x40), Some(0));
    q.set_avail_ring_address(Some(base), Some(0));
    q.set_used_ring_address(Some(base + 0x200), Some(0));
    q.set_ready(true);
    let mut q = DeviceQueue::detached(q);
    Some(blk.process_queue(&mem, &mut q))
}
