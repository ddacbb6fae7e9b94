//! Waiting for a payload, and telling a wedged lab from a slow payload.
//!
//! Once the lab is up, its `/init` writes its uptime to the lab VM's second serial port
//! every few seconds; QEMU appends those lines to a file on the host. A lab kernel that
//! stops (issue #20: a lab CPU caught with interrupts off, a crashed lab kernel that
//! does not power off) stops that heartbeat, and [`wait_lab`] ends the run as a lab
//! failure after [`HEARTBEAT_SILENCE`] instead of waiting for the payload's whole time
//! limit (600 s for some tests). A lab that is only slow keeps beating.

use std::fs;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// How long the lab may stay silent on its heartbeat port before it counts as wedged.
/// The lab writes a beat every 5 s; the margin covers a host whose 2 cores are busy.
pub(crate) const HEARTBEAT_SILENCE: Duration = Duration::from_secs(120);

/// Environment variable: the silence, in seconds, that counts as a wedged lab
/// (default 120 s); at least 10.
pub const HEARTBEAT_SILENCE_ENV: &str = "VIRTKIT_LAB_HEARTBEAT_SILENCE_S";

/// The silence that counts as a wedged lab ([`HEARTBEAT_SILENCE_ENV`]).
pub(crate) fn heartbeat_silence() -> Result<Duration> {
    match std::env::var(HEARTBEAT_SILENCE_ENV) {
        Err(_) => Ok(HEARTBEAT_SILENCE),
        Ok(v) => match v.parse::<u64>() {
            Ok(n) if n >= 10 => Ok(Duration::from_secs(n)),
            _ => Err(LabError::BadInput(format!(
                "{HEARTBEAT_SILENCE_ENV}={v}: expected a number of seconds, at least 10"
            ))),
        },
    }
}

/// How waiting for the lab ended.
#[derive(Debug)]
pub(crate) enum LabWait {
    /// QEMU exited.
    Exited(ExitStatus),
    /// The payload's time limit passed; QEMU was killed.
    TimedOut,
    /// The lab beat at least once, then stopped for `silence`; QEMU was killed.
    Wedged {
        /// How long it had been silent.
        silence: Duration,
        /// The last beat (the lab's uptime in seconds).
        last_beat: String,
    },
}

/// What the watcher knows about the heartbeat file.
#[derive(Debug, Default)]
pub(crate) struct Beats {
    len: u64,
    changed: Option<Instant>,
}

impl Beats {
    /// Notes the file's length at `now`; returns for how long it has not grown, once
    /// it has grown at least once (`None` before the first beat).
    pub(crate) fn observe(&mut self, len: u64, now: Instant) -> Option<Duration> {
        if len != self.len {
            self.len = len;
            self.changed = Some(now);
        }
        self.changed.map(|t| now.saturating_duration_since(t))
    }
}

/// Waits for `child` (the lab QEMU, or a payload run on the host) until `timeout`; with
/// `heartbeat` (the file the lab's second serial port writes, and the silence that counts
/// as a wedge), watches it too. Kills the child's process group on a timeout or a wedge.
pub(crate) fn wait_lab(
    child: &mut Child,
    timeout: Duration,
    heartbeat: Option<(&Path, Duration)>,
) -> Result<LabWait> {
    let deadline = Instant::now() + timeout;
    let mut beats = Beats::default();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(LabError::io("waiting for", "child"))?
        {
            return Ok(LabWait::Exited(status));
        }
        let now = Instant::now();
        let outcome = if now >= deadline {
            Some(LabWait::TimedOut)
        } else if let Some((file, silence)) = heartbeat {
            let len = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            beats
                .observe(len, now)
                .filter(|q| *q >= silence)
                .map(|q| LabWait::Wedged {
                    silence: q,
                    last_beat: last_line(file),
                })
        } else {
            None
        };
        if let Some(outcome) = outcome {
            kill_group(child);
            return Ok(outcome);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child`'s process group (it was started with `process_group(0)`) and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the process group the child leads (created with
        // `process_group(0)` when it was spawned); no memory is involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn silence_counts_only_after_the_first_beat() {
        let t0 = Instant::now();
        let mut b = Beats::default();
        assert_eq!(b.observe(0, t0), None);
        assert_eq!(b.observe(0, t0 + Duration::from_secs(500)), None);
        let t1 = t0 + Duration::from_secs(501);
        assert_eq!(b.observe(4, t1), Some(Duration::ZERO));
        assert_eq!(
            b.observe(4, t1 + Duration::from_secs(7)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            b.observe(9, t1 + Duration::from_secs(8)),
            Some(Duration::ZERO)
        );
    }

    fn spawn(script: &str) -> Child {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_process_that_stops_beating_is_killed_as_wedged() {
        let d = tempfile::tempdir().unwrap();
        let hb = d.path().join("hb");
        let script = format!("echo 1.5 > {0}; echo 2.5 >> {0}; sleep 30", hb.display());
        let mut child = spawn(&script);
        let t0 = Instant::now();
        let w = wait_lab(
            &mut child,
            Duration::from_secs(20),
            Some((&hb, Duration::from_millis(500))),
        )
        .unwrap();
        match w {
            LabWait::Wedged { silence, last_beat } => {
                assert!(silence >= Duration::from_millis(500));
                assert_eq!(last_beat, "2.5");
            }
            other => panic!("expected a wedge, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_process_that_keeps_beating_runs_to_its_end() {
        let d = tempfile::tempdir().unwrap();
        let hb = d.path().join("hb");
        let script = format!(
            "for i in 1 2 3 4 5 6; do echo $i >> {}; sleep 0.2; done",
            hb.display()
        );
        let mut child = spawn(&script);
        let w = wait_lab(
            &mut child,
            Duration::from_secs(20),
            Some((&hb, Duration::from_millis(700))),
        )
        .unwrap();
        assert!(matches!(w, LabWait::Exited(s) if s.success()), "{w:?}");
    }

    #[test]
    fn a_process_that_never_beats_runs_until_its_time_limit() {
        let d = tempfile::tempdir().unwrap();
        let hb = d.path().join("hb");
        let mut child = spawn("sleep 30");
        let w = wait_lab(
            &mut child,
            Duration::from_millis(600),
            Some((&hb, Duration::from_millis(100))),
        )
        .unwrap();
        assert!(matches!(w, LabWait::TimedOut), "{w:?}");
    }
}
