//! Differential fuzzing of the seccomp compiler against libseccomp: the input decodes
//! into a profile (default action, rules with argument conditions, syscalls from the
//! x86_64 table) and a handful of calls; both compilers' programs run through the
//! same BPF interpreter and any different verdict panics. The body is
//! `virtkit_seccomp::testing::seccomp_diff`, which the corpus replay test
//! (crates/virtkit-seccomp/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz seccomp_diff --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_seccomp::testing::seccomp_diff(data);
});
