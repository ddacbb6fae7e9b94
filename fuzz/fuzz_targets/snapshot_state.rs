//! Fuzz the snapshot restore path with hostile machine state (`state.json`'s `state`, its
//! checksum recomputed, as anyone who edits a snapshot can): vCPU and VM state, COM1, every
//! virtio-mmio transport and its queues, restored on the fake hypervisor. Never a panic:
//! a bad snapshot is an error. The body is `virtkit_vmm::testing::snapshot_state`, which the
//! corpus replay test (crates/virtkit-vmm/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz snapshot_state --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_vmm::testing::snapshot_state(data);
});
