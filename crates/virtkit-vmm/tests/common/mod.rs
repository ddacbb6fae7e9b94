//! What the VMM's integration tests share: a serial capture and a bounded wait.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// COM1's output, kept for the test to read.
#[derive(Clone, Default, Debug)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    /// How many bytes were written.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Waits up to `secs` seconds for `f`, failing the test with `what` after.
pub fn wait_until_for(secs: u64, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits up to 30 s for `f`.
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    wait_until_for(30, what, f)
}

/// Asserts that the counting guest's output `out` (after a restore or a migration) goes on
/// right after the last byte it printed before, `seen`.
pub fn assert_counts_on(seen: &[u8], out: &[u8]) {
    let last = *seen.last().unwrap();
    assert_eq!(
        out[0],
        last.wrapping_add(1),
        "goes on after {last}: {:?}",
        &out[..out.len().min(5)]
    );
    assert_eq!(out[1], last.wrapping_add(2));
}
