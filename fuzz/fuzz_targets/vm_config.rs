//! Fuzz `virtkit_vmm::VmConfig` JSON (the command line's config, the
//! control API's `vm.create` body): serde, a serialization round trip that
//! must give the same config, and `VmConfig::validate` both as given and
//! with its files replaced by existing ones. The body is
//! `virtkit_vmm::testing::vm_config`, which the corpus replay test
//! (crates/virtkit-vmm/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz vm_config --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_vmm::testing::vm_config(data);
});
