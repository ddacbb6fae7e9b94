//! Fuzz qcow2 opening and reading: the input is the image file itself.
//! Any input must be refused with an error or read without panicking, and
//! without unbounded memory (libFuzzer's -rss_limit_mb catches that).
//! The body is `virtkit_qcow2::testing::open_read`, which the corpus replay
//! test (crates/virtkit-qcow2/tests/hostile_headers.rs) also runs.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run qcow2_open_read -- -max_len=262144 -rss_limit_mb=512 -timeout=10 -max_total_time=120`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("virtkit-fuzz-read-{}.qcow2", std::process::id()));
    let _ = virtkit_qcow2::testing::open_read(&path, data);
    let _ = std::fs::remove_file(&path);
});
