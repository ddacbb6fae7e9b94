//! The committed inputs of the fuzz targets (`fuzz/corpus/TARGET/seed-*` and
//! whatever else is there, plus `fuzz/regressions/TARGET/` when present), for the
//! corpus replay tests that run every target's entry point on stable Rust.
//!
//! Every crate with a fuzz entry point (`testing::...`) has a
//! `tests/fuzz_corpus.rs` that calls [`replay`]: an input that once panicked or
//! hung stays covered by `cargo test`, not only by `cargo xtask fuzz`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long one input may run in [`replay`] before it counts as a hang.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The fuzz workspace of this checkout (`<repo>/fuzz`).
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every committed input of `target`, sorted by path: `(path, bytes)`.
///
/// # Panics
/// When there is none, or one cannot be read: a replay test over nothing would
/// pass without testing anything.
pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = fuzz_dir();
    let mut out = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let p = entry.path();
            if p.is_file() {
                let data =
                    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
                out.push((p, data));
            }
        }
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no corpus files for {target} under {}",
        root.display()
    );
    out
}

/// The bytes of `fuzz/corpus/TARGET/seed-NAME`.
///
/// # Panics
/// When the seed cannot be read.
pub fn seed(target: &str, name: &str) -> Vec<u8> {
    let p = fuzz_dir()
        .join("corpus")
        .join(target)
        .join(format!("seed-{name}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs `f` on every input of `target`, each on its own thread with
/// [`DEADLINE`].
///
/// # Panics
/// Naming the inputs, when `f` panicked on any of them or one ran past the
/// deadline (a hang: the test stops at the first).
pub fn replay<T, F>(target: &str, f: F)
where
    T: Send + 'static,
    F: Fn(&[u8]) -> T + Clone + Send + 'static,
{
    let mut panicked = Vec::new();
    for (path, data) in inputs(target) {
        let (tx, rx) = mpsc::channel();
        let f = f.clone();
        std::thread::spawn(move || {
            let _ = tx.send(f(&data));
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{}: still running after {DEADLINE:?}: hang", path.display())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panicked.push(path.display().to_string()),
        }
    }
    assert!(panicked.is_empty(), "{target}: panicked on {panicked:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_names_the_inputs_that_panic() {
        let r = std::panic::catch_unwind(|| {
            replay("virtio_queue", |d: &[u8]| {
                assert!(d.len() > usize::MAX / 2, "small input");
            })
        });
        let msg = r
            .err()
            .and_then(|e| e.downcast::<String>().ok())
            .unwrap_or_default();
        assert!(msg.contains("virtio_queue: panicked on"), "{msg}");
        assert!(msg.contains("seed-"), "{msg}");
    }

    #[test]
    fn replay_passes_when_nothing_panics_and_seeds_exist() {
        replay("virtio_queue", |d: &[u8]| d.len());
        assert!(!seed("virtio_queue", "valid-chains").is_empty());
    }
}
