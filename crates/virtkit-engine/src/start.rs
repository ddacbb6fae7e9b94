//! `start`: a detached container's monitor spawned in a session of its own; returns once
//! the monitor reports the container running (or why it is not).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::monitor::READY_FD_ENV;
use crate::record::{self, Status};
use crate::{Engine, EngineError};

/// The descriptor number the monitor gets its report pipe on.
const READY_FD: i32 = 3;

fn pipe() -> Result<(OwnedFd, OwnedFd), EngineError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(EngineError::io("cannot make a pipe", "pipe2")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors were just made and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Engine {
    /// Starts container `name` (a name or id) detached. Starting a running container
    /// does nothing.
    pub fn start(&self, name: &str) -> Result<(), EngineError> {
        let r = self.lookup(name)?;
        if record::monitor_alive(&r) {
            return Ok(());
        }
        if self.monitor.is_empty() {
            return Err(EngineError::BadOption(
                "this engine has no monitor command (Engine::with_monitor)".into(),
            ));
        }
        let dir = self.dir(&r.id);
        record::update(&dir, |x| x.stopped_by_user = false)?;
        let (rd, wr) = pipe()?;
        let log = dir.join("monitor.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(EngineError::io("cannot open", &log))?;
        let mut cmd = Command::new(&self.monitor[0]);
        cmd.args(&self.monitor[1..])
            .arg(&r.id)
            .env(READY_FD_ENV, READY_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let wfd = wr.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls (setsid, dup2) on
        // descriptors that exist in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::dup2(wfd, READY_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(EngineError::io(
            "cannot start the monitor",
            std::path::PathBuf::from(&self.monitor[0]),
        ))?;
        drop(wr);
        let mut report = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut report);
        if report.trim() == "ok" {
            // The monitor goes on alone; it is reaped by init when this process exits.
            std::mem::forget(child);
            return Ok(());
        }
        let _ = child.wait();
        let detail = if report.trim().is_empty() {
            std::fs::read_to_string(&log)
                .ok()
                .and_then(|l| l.lines().last().map(str::to_string))
                .unwrap_or_else(|| "the monitor exited without a report".into())
        } else {
            report.trim().to_string()
        };
        let _ = record::update(&dir, |x| {
            x.status = Status::Exited;
            x.monitor = None;
        });
        Err(EngineError::Start { id: r.id, detail })
    }
}
