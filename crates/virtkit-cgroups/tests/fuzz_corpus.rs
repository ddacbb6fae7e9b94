//! Replays the committed inputs of the `cgroup_parsers` and `oci_config` fuzz
//! targets (`fuzz/corpus/TARGET/`, and `fuzz/regressions/TARGET/` when
//! present) through their entry points in `virtkit_cgroups::testing`, on
//! stable Rust: an input that once panicked stays covered.
#![allow(clippy::unwrap_used)]

use virtkit_cgroups::testing;
use virtkit_lab::fuzz_corpus::{replay, seed};

#[test]
fn cgroup_parsers_corpus_replays() {
    replay("cgroup_parsers", |d| {
        testing::parsers(d);
    });
}

/// The seeds reach the parsers they are for.
#[test]
fn cgroup_parsers_seeds_parse() {
    let run = |n| testing::parsers(&seed("cgroup_parsers", n));
    assert!(run("mountinfo-hybrid").mountinfo);
    assert!(run("mountinfo-unified").mountinfo);
    assert!(run("proc-cgroup-v1").proc_cgroup);
    assert!(run("io-stat").io_stat);
    assert!(run("blkio-pair").blkio);
    assert!(run("pids").pids);
    assert!(run("number-max").number);
    assert!(run("cpu-stat").keys >= 3);
}

/// The body of the `oci_config` target, this crate's half: the JSON as an OCI spec, then
/// `testing::oci_spec`.
fn oci_config(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(data) {
        let _ = testing::oci_spec(&spec);
    }
}

#[test]
fn oci_config_corpus_replays() {
    replay("oci_config", oci_config);
}

/// The seeds are specs, and their resources convert.
#[test]
fn oci_config_seeds_convert() {
    let spec =
        |n| serde_json::from_slice::<oci_spec::runtime::Spec>(&seed("oci_config", n)).unwrap();
    let r = testing::oci_spec(&spec("runc-default")).unwrap();
    assert!(r.devices.is_some());
    let r = testing::oci_spec(&spec("resources-all")).unwrap();
    assert_eq!(r.memory.limit, Some(256 << 20));
    assert_eq!(r.devices.as_ref().map(Vec::len), Some(3));
    assert!(testing::oci_spec(&spec("negative-device")).is_err());
}
