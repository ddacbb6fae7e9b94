//! Fuzz the Dockerfile parser (continuations, comments, quotes, JSON forms, `$VAR`
//! substitution) with arbitrary text: errors are fine, a panic, a hang or an error or
//! step naming a line outside the file is a finding. The body is
//! `virtkit_image::testing::dockerfile_parse`, which the corpus replay test
//! (crates/virtkit-image/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz dockerfile_parse --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_image::testing::dockerfile_parse(data);
});
