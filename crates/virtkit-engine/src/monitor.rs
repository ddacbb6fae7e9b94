//! The monitor: one small process per running container (conmon's role). It sets up
//! the network, runs the container through the runtime with its output appended to the
//! log, tells whoever started it once the container runs (or why it did not), records
//! the exit status, tears the network down and applies the restart policy.

use std::fs::File;
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::record::{self, Record, RestartPolicy, Status};
use crate::{Engine, EngineError};

/// The environment variable naming the descriptor on which a detached monitor reports
/// `ok` or the reason it failed.
pub const READY_FD_ENV: &str = "VIRTKIT_MONITOR_READY_FD";

/// Where the container's stdio goes.
#[derive(Debug)]
pub enum Stdio3 {
    /// Appended to the container's log (a detached container).
    Log,
    /// This process's own (a container run in the foreground).
    Inherit,
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    }
}

impl Engine {
    /// The container's log file.
    pub fn log_path(&self, id: &str) -> std::path::PathBuf {
        self.dir(id).join("container.log")
    }

    /// Waits until the runtime reports `id` running, or `child` (its `run`) exits.
    fn wait_running(&self, id: &str, child: &mut Child) -> Result<(), EngineError> {
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(s) = self.runtime_state(id) {
                if s.status == "running" || s.status == "stopped" {
                    return Ok(());
                }
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(EngineError::Start {
                    id: id.to_string(),
                    detail: "the runtime did not start it within 60 s".into(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Runs container `id` until it exits for good (its restart policy says so, or a
    /// user stopped it) and returns its last exit status. `ready`, when given, receives
    /// `ok\n` once the container first runs, or the error that kept it from starting.
    pub fn monitor(
        &self,
        id: &str,
        mut ready: Option<File>,
        stdio: Stdio3,
    ) -> Result<i32, EngineError> {
        let dir = self.dir(id);
        if let Some(f) = &ready {
            // The container must not inherit the report pipe, or its reader never sees
            // the end of the report.
            // SAFETY: fcntl on a descriptor `ready` owns.
            unsafe {
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(f),
                    libc::F_SETFD,
                    libc::FD_CLOEXEC,
                )
            };
        }
        loop {
            let started = self.start_once(id, &stdio);
            let (mut child, rec) = match started {
                Ok(x) => x,
                Err(e) => {
                    let _ = record::update(&dir, |r| {
                        r.status = Status::Exited;
                        r.monitor = None;
                        if r.exit_code.is_none() {
                            r.exit_code = Some(125);
                        }
                    });
                    if let Some(f) = ready.as_mut() {
                        let _ = writeln!(f, "{e}");
                    }
                    return Err(e);
                }
            };
            if let Some(mut f) = ready.take() {
                let _ = f.write_all(b"ok\n");
            }
            let status = child
                .wait()
                .map_err(EngineError::io("cannot wait for", self.runtime.clone()));
            let code = status.map(exit_code).unwrap_or(255);
            self.runtime_delete(id);
            self.network_down(&rec);
            let rec = record::update(&dir, |r| {
                r.status = Status::Exited;
                r.exit_code = Some(code);
            })?;
            let again = !rec.stopped_by_user
                && match rec.restart {
                    RestartPolicy::No => false,
                    RestartPolicy::OnFailure => code != 0,
                    RestartPolicy::Always => true,
                };
            if !again {
                // Only if the record still names this monitor: once the container is
                // marked exited, `start` may already have handed it to a new monitor,
                // whose entry a late write here would wipe (a later `reap` would then
                // take the running container for an orphan).
                let me = std::process::id() as i32;
                record::update(&dir, |r| {
                    if r.monitor.is_some_and(|(pid, _)| pid == me) {
                        r.monitor = None;
                    }
                })?;
                if rec.auto_remove {
                    self.remove(id, true)?;
                }
                return Ok(code);
            }
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << rec.restarts.min(5)));
            std::thread::sleep(backoff);
            let _ = record::update(&dir, |r| r.restarts = r.restarts.saturating_add(1));
        }
    }

    /// One start: network up, `runtime run` spawned, waited for until it runs, the
    /// record marked running.
    fn start_once(&self, id: &str, stdio: &Stdio3) -> Result<(Child, Record), EngineError> {
        let dir = self.dir(id);
        let me = std::process::id() as i32;
        let rec = record::update(&dir, |r| {
            r.monitor = record::start_time(me).map(|t| (me, t))
        })?;
        let rec = self.network_up(&rec)?;
        let spawned = (|| {
            let mut cmd = self.runtime_command();
            cmd.args(["run", "--bundle"])
                .arg(dir.join("bundle"))
                .arg(id);
            match stdio {
                Stdio3::Log => {
                    let log = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.log_path(id))
                        .map_err(EngineError::io("cannot open", self.log_path(id)))?;
                    let err = log
                        .try_clone()
                        .map_err(EngineError::io("cannot open", self.log_path(id)))?;
                    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
                }
                Stdio3::Inherit => {}
            }
            let mut child = cmd.spawn().map_err(|e| EngineError::Runtime {
                runtime: self.runtime.clone(),
                verb: "run",
                id: id.to_string(),
                detail: e.to_string(),
            })?;
            if let Err(e) = self.wait_running(id, &mut child) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Ok(child)
        })();
        match spawned {
            Ok(child) => {
                let rec = record::update(&dir, |r| r.status = Status::Running)?;
                Ok((child, rec))
            }
            Err(e) => {
                self.runtime_delete(id);
                self.network_down(&rec);
                Err(e)
            }
        }
    }
}
