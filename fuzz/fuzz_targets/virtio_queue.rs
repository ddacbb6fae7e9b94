//! Fuzz the shared queue handling every device model uses
//! (`virtkit_virtio::queue::DeviceQueue`): pop, rearm, add_used, undo_pop and
//! the notification calls against arbitrary avail/used ring contents,
//! descriptor tables, indices, queue sizes and ring addresses (inside guest
//! memory, in a hole, or at the top of the address space). Never a panic,
//! never an endless device loop, never a head outside the queue. The body is
//! `virtkit_virtio::testing::device_queue` (see its docs for the layout),
//! which the corpus replay test (crates/virtkit-virtio/tests/fuzz_corpus.rs)
//! also runs.
//!
//! Run: `cargo xtask fuzz virtio_queue --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_virtio::testing::device_queue(data);
});
