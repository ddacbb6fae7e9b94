//! Fuzz an OCI runtime config.json: `oci_spec::runtime::Spec` through
//! serde_json, then what the runtime does with it in our crates:
//! `virtkit_cgroups::testing::oci_spec` (cgroupsPath, `Resources::from_oci`,
//! validation, the v2 conversions, the device policy as v1 lines and as an
//! eBPF program checked against the reference semantics) and
//! `virtkit_namespaces::testing::oci_spec` (namespace types, id maps,
//! hostname, mount options, propagation, devices, masked and read-only paths,
//! the whole rootfs setup on the recording fake). Never a panic. The corpus
//! replay tests are in crates/virtkit-cgroups/tests/fuzz_corpus.rs and
//! crates/virtkit-namespaces/tests/fuzz_corpus.rs.
//!
//! Run: `cargo xtask fuzz oci_config --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(data) {
        let _ = virtkit_cgroups::testing::oci_spec(&spec);
        let _ = virtkit_namespaces::testing::oci_spec(&spec);
    }
});
