//! `run`: `create` and `start` in one, then (unless detached) wait and `delete`.

use crate::create::{create_with, CreateOpts};
use crate::delete::delete_loaded;
use crate::error::Result;
use crate::spec::new_pid_namespace;
use crate::start::start_run;
use crate::state::Status;
use crate::Runtime;

impl Runtime {
    /// `run`: create + start, then (unless `detach`) wait for the container's process and
    /// delete the container. Returns the process's exit code (128 + signal when killed; 0
    /// when detached).
    pub fn run(&self, o: &CreateOpts, detach: bool) -> Result<i32> {
        let (c, spec, _chan) = create_with(self, o, !detach, true)?;
        // Poststart hooks only: init started at "ready". Their failure is logged.
        start_run(self, &c, &spec);
        if detach {
            return Ok(0);
        }
        let code = self.host().wait(c.saved.pid)?;
        // Init is reaped: the state needs no reload and init no signal. A new PID namespace
        // ended with its init (the kernel kills and waits for every process in it), so the
        // cgroup has nothing left to kill unless someone moved a process in.
        delete_loaded(
            self,
            &c,
            Status::Stopped,
            Some(&spec),
            new_pid_namespace(&spec),
        )?;
        Ok(code)
    }
}
