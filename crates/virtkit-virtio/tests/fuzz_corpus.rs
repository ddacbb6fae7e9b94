//! Replays the committed inputs of the `virtio_queue` fuzz target
//! (`fuzz/corpus/virtio_queue/`, and `fuzz/regressions/virtio_queue/` when
//! present) through its entry point, `virtkit_virtio::testing::device_queue`,
//! on stable Rust: an input that once panicked or hung stays covered.
#![allow(clippy::unwrap_used)]

use virtkit_lab::fuzz_corpus::{replay, seed};
use virtkit_virtio::testing;

/// Every input runs on its own thread with a deadline: a panic or a hang fails here.
#[test]
fn virtio_queue_corpus_replays() {
    replay("virtio_queue", testing::device_queue);
}

/// The seeds reach where they claim to: chains taken and returned, and the
/// queue faults that stop a hostile driver.
#[test]
fn virtio_queue_seeds_reach_deep() {
    let seed = |name: &str| testing::device_queue(&seed("virtio_queue", name));
    let run = seed("valid-chains");
    assert_eq!(run.fault, None, "{run:?}");
    // Two chains drained, one taken, put back, taken again and returned.
    assert_eq!((run.popped, run.used), (4, 3), "{run:?}");
    // The indirect chain is walked through its table.
    assert!(run.descriptors >= run.popped + 2, "{run:?}");
    assert_eq!(seed("event-idx-wrap").fault, None);
    assert!(matches!(
        seed("bogus-avail-index").fault,
        Some(virtkit_virtio::QueueFault::BogusAvailIndex { avail: 41, .. })
    ));
    assert!(matches!(
        seed("bad-head").fault,
        Some(virtkit_virtio::QueueFault::BadHeadIndex {
            head: 0xff,
            size: 16
        })
    ));
    assert!(matches!(
        seed("top-of-memory").fault,
        Some(virtkit_virtio::QueueFault::UnreadableAvailRing(_))
    ));
    assert_eq!(
        seed("not-ready").fault,
        Some(virtkit_virtio::QueueFault::NotReady)
    );
    assert_eq!(
        seed("avail-at-zero").fault,
        Some(virtkit_virtio::QueueFault::NotReady)
    );
}
