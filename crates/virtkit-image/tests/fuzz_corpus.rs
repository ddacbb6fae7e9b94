//! Replays the committed inputs of the `layer_unpack` fuzz target (`fuzz/corpus/
//! layer_unpack/`, and `fuzz/regressions/layer_unpack/` when present) through
//! `virtkit_image::testing::layer_unpack` on stable Rust: an input that once panicked
//! or wrote outside its layer stays covered.
#![allow(clippy::unwrap_used)]

use virtkit_image::testing::{dockerfile_parse, layer_unpack};
use virtkit_lab::fuzz_corpus::{replay, seed};

#[test]
fn layer_unpack_corpus_replays() {
    replay("layer_unpack", |d| {
        layer_unpack(d);
    });
}

/// The seeds reach what they are for.
#[test]
fn layer_unpack_seeds_unpack() {
    for s in ["basic-tar", "basic-gzip", "basic-zstd", "whiteouts"] {
        let o = layer_unpack(&seed("layer_unpack", s));
        assert!(o.unpacked && o.entries >= 4, "{s}: {o:?}");
    }
    // The hostile seed may fail or stay inside; it never writes outside (checked inside).
    layer_unpack(&seed("layer_unpack", "hostile-links"));
}

#[test]
fn dockerfile_parse_corpus_replays() {
    replay("dockerfile_parse", dockerfile_parse);
    // The full seed parses into every instruction it has.
    assert_eq!(dockerfile_parse(&seed("dockerfile_parse", "full")), 12);
}
