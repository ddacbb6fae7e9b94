//! Replays the committed inputs of the `mmio_transport` and `vm_config` fuzz
//! targets (`fuzz/corpus/TARGET/`, and `fuzz/regressions/TARGET/` when
//! present) through their entry points in `virtkit_vmm::testing`, on stable
//! Rust: an input that once panicked or hung stays covered.
#![allow(clippy::unwrap_used)]

use virtkit_lab::fuzz_corpus::{replay, seed};
use virtkit_vmm::testing;

#[test]
fn mmio_transport_corpus_replays() {
    replay("mmio_transport", testing::mmio_transport);
}

/// The seeds reach the device: a request is served (and interrupts), a queue the
/// transport cannot use sets DEVICE_NEEDS_RESET.
#[test]
fn mmio_transport_seeds_reach_the_device() {
    let run = |n| testing::mmio_transport(&seed("mmio_transport", n)).unwrap();
    let r = run("read-request");
    assert_eq!(r.status, 0xf, "{r:?}");
    assert!(r.interrupts >= 1, "{r:?}");
    let r = run("write-then-read");
    assert!(r.interrupts >= 1, "{r:?}");
    let r = run("avail-at-zero");
    assert_ne!(r.status & 0x40, 0, "{r:?}");
    let r = run("features-refused");
    assert_eq!(r.status & 0x8, 0, "{r:?}");
}

#[test]
fn vm_config_corpus_replays() {
    replay("vm_config", testing::vm_config);
}

/// The seeds parse, and the full one validates once its files exist.
#[test]
fn vm_config_seeds_parse() {
    let run = |n| testing::vm_config(&seed("vm_config", n));
    assert_eq!(run("cloud-hypervisor-full"), Some(Ok(())));
    assert!(run("minimal").is_some());
    assert!(matches!(run("bad-mac"), Some(Err(_))));
}
