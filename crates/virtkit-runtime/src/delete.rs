//! `delete`: kills what is left of a container, removes its cgroup, runs the poststop
//! hooks and removes its state.

use std::time::Duration;

use oci_spec::runtime::Spec;

use crate::error::{bail, Context, Result};
use crate::hooks::{self, After};
use crate::state::{check_id, Container, Status};
use crate::sys::wait_dead;
use crate::Runtime;

impl Runtime {
    /// `delete`: removes a created or stopped container (with `force`, a running or
    /// paused one too, killing it first). With `force`, an id that does not exist is no
    /// error and a state that cannot be read is removed, as runc does.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        check_id(id)?;
        let dir = self.root().join(id);
        let c = match self.load(id) {
            Ok(c) => c,
            Err(e) => {
                // As runc: `delete --force` of a container that does not exist succeeds, and
                // one whose state cannot be read is removed.
                if force && !dir.exists() {
                    return Ok(());
                }
                if force {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("remove {}", dir.display()))?;
                    return Ok(());
                }
                return Err(e);
            }
        };
        let status = self.status(&c);
        match status {
            Status::Stopped | Status::Created => {}
            _ if force => {}
            s => bail!(
                "cannot delete container {id} that is not stopped: {}",
                s.as_str()
            ),
        }
        delete_loaded(self, &c, status, None, false)
    }
}

/// `delete` of a loaded container in `status`: kills what is left, removes the cgroup,
/// runs poststop hooks and removes the state directory. With `likely_empty` (init of a
/// new PID namespace reaped) the cgroup is removed first and only searched for processes
/// to kill if that fails.
pub(crate) fn delete_loaded(
    rt: &Runtime,
    c: &Container,
    status: Status,
    spec: Option<&Spec>,
    likely_empty: bool,
) -> Result<()> {
    let cg = if c.saved.cgroup_path.is_empty() {
        None
    } else {
        rt.host().cgroup(&c.saved.cgroup_path).ok()
    };
    let cg = match cg {
        Some(cg) if likely_empty && cg.delete().is_ok() => None,
        other => other,
    };
    if status != Status::Stopped {
        let _ = rt.host().kill(c.saved.pid, libc::SIGKILL);
    }
    if let Some(cg) = &cg {
        if status == Status::Paused {
            let _ = cg.thaw();
        }
        // A cgroup that is already gone has no processes: kill_all finds none.
        cg.kill_all().context("kill the container's processes")?;
    }
    if !wait_dead(
        rt.host(),
        c.saved.pid,
        c.saved.start_time,
        Duration::from_secs(10),
    ) {
        bail!("init {} did not die", c.saved.pid);
    }
    if let Some(cg) = &cg {
        cg.delete()
            .with_context(|| format!("remove cgroup {}", c.saved.cgroup_path))?;
    }
    if c.saved.create_done {
        hooks::run_after(rt.host(), c, spec, After::Stop);
    }
    c.remove_dir()
}
