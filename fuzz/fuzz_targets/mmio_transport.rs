//! Fuzz the virtio-mmio transport as a guest drives it wrongly: register
//! reads and writes of any size at any offset, in any order (status
//! transitions, feature selects, queue setup with garbage addresses,
//! activation, reset, config space, QueueNotify), with guest memory writes
//! and event-loop turns in between, through virtkit-vmm's `DeviceManager` on
//! the fake hypervisor with a virtio-blk device on a raw scratch file. The
//! body is `virtkit_vmm::testing::mmio_transport` (see its docs for the
//! operations), which the corpus replay test
//! (crates/virtkit-vmm/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz mmio_transport --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_vmm::testing::mmio_transport(data);
});
