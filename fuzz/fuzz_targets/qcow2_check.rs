//! Fuzz what `virtkit-img check`, `check -r all`, `info` and `map` do to an
//! image file: the input is the file, opened read-write on a scratch copy,
//! checked, repaired (`Repair::All`), checked again, mapped, closed, reopened
//! read-only and read-write (with the dirty-bit rebuild). Any input must be
//! refused with an error or go through without a panic, a hang or unbounded
//! memory. The body is `virtkit_qcow2::testing::check_repair`, which the
//! corpus replay test (crates/virtkit-qcow2/tests/fuzz_check.rs) also runs.
//!
//! Run: `cargo xtask fuzz qcow2_check --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("virtkit-fuzz-check-{}.qcow2", std::process::id()));
    let _ = virtkit_qcow2::testing::check_repair(&path, data);
    let _ = std::fs::remove_file(&path);
});
