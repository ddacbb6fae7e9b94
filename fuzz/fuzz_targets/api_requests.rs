//! Fuzz the control API's HTTP reader: arbitrary bytes on a connection (pipelined
//! requests, chunked bodies, `Expect: 100-continue`, oversized headers and bodies), each
//! body parsed as its endpoint's JSON. Never a panic, never a hang. The body is
//! `virtkit_vmm::testing::api_requests`, which the corpus replay test
//! (crates/virtkit-vmm/tests/fuzz_corpus.rs) also runs.
//!
//! Run: `cargo xtask fuzz api_requests --time 600`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_vmm::testing::api_requests(data);
});
