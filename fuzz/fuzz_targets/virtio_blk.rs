//! Fuzz virtio-blk over arbitrary guest memory: descriptors, headers,
//! segments and ring indices are all fuzzer-controlled. The body is
//! `virtkit_virtio::testing::blk_queue` (see its docs for the layout), which
//! the corpus replay test (crates/virtkit-virtio/tests/hostile_queue.rs)
//! also runs. A hang is a finding: always pass `-timeout`.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run virtio_blk -- -timeout=10 -max_total_time=120`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_virtio::testing::blk_queue(data);
});
