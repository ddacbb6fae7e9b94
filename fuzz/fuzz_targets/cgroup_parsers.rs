//! Fuzz every parser of kernel text in virtkit-cgroups with the same input:
//! mountinfo (`Hierarchies::from_mountinfo`, then a manager opened on it),
//! `/proc/PID/cgroup` (`ProcCgroup::parse`), `io.stat`, the v1 blkio pair,
//! flat keyed files, numbers, pid lists, `freezer.state`, device numbers,
//! device access strings and cgroup paths. The body is
//! `virtkit_cgroups::testing::parsers`, which the corpus replay test
//! (crates/virtkit-cgroups/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz cgroup_parsers --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_cgroups::testing::parsers(data);
});
