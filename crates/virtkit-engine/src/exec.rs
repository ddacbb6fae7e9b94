//! `exec`: a new process in a running container, through the runtime's `exec`, with
//! this process's stdio; returns its exit status.

use crate::record::{self, Status};
use crate::{Engine, EngineError};

impl Engine {
    /// Runs `args` in container `name` (with a terminal when `tty`); its exit status.
    pub fn exec(
        &self,
        name: &str,
        args: &[String],
        tty: bool,
        env: &[String],
    ) -> Result<i32, EngineError> {
        let r = self.lookup(name)?;
        if r.status != Status::Running || !record::monitor_alive(&r) {
            return Err(EngineError::State {
                name: r.name,
                why: "is not running".into(),
            });
        }
        if args.is_empty() {
            return Err(EngineError::BadOption("exec needs a command".into()));
        }
        let mut cmd = self.runtime_command();
        cmd.arg("exec");
        if tty {
            cmd.arg("--tty");
        }
        for e in env {
            cmd.args(["--env", e]);
        }
        cmd.arg(&r.id).args(args);
        let status = cmd.status().map_err(|e| EngineError::Runtime {
            runtime: self.runtime.clone(),
            verb: "exec",
            id: r.id.clone(),
            detail: e.to_string(),
        })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255))
    }
}
