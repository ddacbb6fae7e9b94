//! Replays the committed inputs of the `oci_config` fuzz target
//! (`fuzz/corpus/oci_config/`, and `fuzz/regressions/oci_config/` when present)
//! through this crate's half of it, `virtkit_namespaces::testing::oci_spec`, on
//! stable Rust: a config that once panicked stays covered.
#![allow(clippy::unwrap_used)]

use oci_spec::runtime::Spec;
use virtkit_lab::fuzz_corpus::{replay, seed};
use virtkit_namespaces::testing;

#[test]
fn oci_config_corpus_replays() {
    replay("oci_config", |data: &[u8]| {
        if let Ok(spec) = serde_json::from_slice::<Spec>(data) {
            let _ = testing::oci_spec(&spec);
        }
    });
}

/// The runc default spec goes all the way through the rootfs setup.
#[test]
fn oci_config_seed_sets_up_a_rootfs() {
    let spec: Spec = serde_json::from_slice(&seed("oci_config", "runc-default")).unwrap();
    let run = testing::oci_spec(&spec);
    assert_eq!(run.rootfs, Ok(()));
    assert!(run.clone_flags & libc::CLONE_NEWNS != 0);
    assert!(run.calls.len() > 20, "{:?}", run.calls);
}
