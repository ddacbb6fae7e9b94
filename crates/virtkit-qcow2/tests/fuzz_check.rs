//! Replays the committed inputs of the `qcow2_check` fuzz target
//! (`fuzz/corpus/qcow2_check/`, and `fuzz/regressions/qcow2_check/` when
//! present) through its entry point, `virtkit_qcow2::testing::check_repair`,
//! on stable Rust, and checks that the seeds (made with qemu-img, some damaged
//! by hand) get the verdicts `qemu-img check` gives them.
#![allow(clippy::unwrap_used)]

use virtkit_lab::fuzz_corpus::{replay, seed};
use virtkit_qcow2::testing::{check_repair, CheckRun};

#[test]
fn qcow2_check_corpus_replays_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("input.qcow2");
    replay("qcow2_check", move |data: &[u8]| {
        let _ = check_repair(&scratch, data);
    });
}

fn run_seed(name: &str) -> CheckRun {
    let dir = tempfile::tempdir().unwrap();
    let (err, run) = check_repair(&dir.path().join("s.qcow2"), &seed("qcow2_check", name));
    assert!(err.is_none(), "{name}: {err:?}");
    run
}

/// (corruptions, leaks) of a report.
fn found(r: &Option<virtkit_qcow2::CheckReport>) -> (u64, u64) {
    let r = r.as_ref().unwrap();
    (r.corruptions, r.leaks)
}

#[test]
fn qcow2_check_seeds_get_qemu_img_verdicts() {
    for clean in [
        "qemu-v3-data-zero",
        "qemu-v2",
        "qemu-rc1",
        "qemu-snap",
        "qemu-comp",
        "dirty",
    ] {
        let run = run_seed(clean);
        assert_eq!(found(&run.before), (0, 0), "{clean}: {run:?}");
        assert_eq!(found(&run.after), (0, 0), "{clean}: {run:?}");
    }
    // qemu-img: 1 leaked cluster.
    let run = run_seed("leak");
    assert_eq!(found(&run.before), (0, 1), "{run:?}");
    assert_eq!(found(&run.after), (0, 0), "{run:?}");
    // qemu-img: errors (refcounts too low).
    for bad in ["refcount-zero", "refblock-missing", "l1-shared-l2"] {
        let run = run_seed(bad);
        assert!(found(&run.before).0 > 0, "{bad}: {run:?}");
    }
}
