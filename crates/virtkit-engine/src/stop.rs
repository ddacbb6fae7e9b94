//! `stop` (the stop signal, then SIGKILL after a grace period) and `kill`; both mark the
//! container stopped by the user, so its restart policy does not bring it back.

use std::time::{Duration, Instant};

use crate::record::{self, Record, Status};
use crate::{Engine, EngineError};

impl Engine {
    /// Waits up to `limit` for the container's monitor to record its exit.
    fn wait_exit(&self, id: &str, limit: Duration) -> Result<bool, EngineError> {
        let t0 = Instant::now();
        loop {
            let r = record::load(&self.dir(id))?;
            if r.status != Status::Running || !record::monitor_alive(&r) {
                return Ok(true);
            }
            if t0.elapsed() >= limit {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Marks container `name` stopped by the user; its record, and whether it runs.
    fn mark_stopped(&self, name: &str) -> Result<(Record, bool), EngineError> {
        let r = self.lookup(name)?;
        let r = record::update(&self.dir(&r.id), |x| x.stopped_by_user = true)?;
        let running = r.status == Status::Running && record::monitor_alive(&r);
        Ok((r, running))
    }

    /// Stops container `name`: its stop signal, then SIGKILL after `grace`.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<(), EngineError> {
        let (r, running) = self.mark_stopped(name)?;
        if !running {
            return Ok(());
        }
        let sig = r.stop_signal.trim_start_matches("SIG").to_string();
        // The container may be exiting already: a failed kill is checked by the wait.
        let _ = self.runtime_kill(&r.id, &sig);
        if self.wait_exit(&r.id, grace)? {
            return Ok(());
        }
        let _ = self.runtime_kill(&r.id, "KILL");
        if self.wait_exit(&r.id, Duration::from_secs(10))? {
            Ok(())
        } else {
            Err(EngineError::State {
                name: r.name,
                why: "did not stop 10 s after SIGKILL".into(),
            })
        }
    }

    /// Sends `signal` to container `name`'s init.
    pub fn kill(&self, name: &str, signal: &str) -> Result<(), EngineError> {
        let (r, running) = self.mark_stopped(name)?;
        if !running {
            return Err(EngineError::State {
                name: r.name,
                why: "is not running".into(),
            });
        }
        self.runtime_kill(&r.id, signal.trim_start_matches("SIG"))
    }
}
