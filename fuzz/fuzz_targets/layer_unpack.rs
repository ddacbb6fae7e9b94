//! Fuzz OCI layer unpacking (tar, gzip, zstd; whiteouts applied and as overlayfs) with
//! arbitrary archives: errors are fine, a panic, a hang or a write outside the layer
//! directory is a finding. The body is `virtkit_image::testing::layer_unpack`, which
//! the corpus replay test (crates/virtkit-image/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz layer_unpack --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_image::testing::layer_unpack(data);
});
