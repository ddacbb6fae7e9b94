//! `kill`: a signal to the container's init, or to every process of its cgroup.

use crate::error::{bail, Context, Result};
use crate::state::Status;
use crate::Runtime;

impl Runtime {
    /// `kill`: sends `sig` to container `id`'s init, or with `all` to every process in
    /// its cgroup (frozen meanwhile, so no fork escapes).
    pub fn kill(&self, id: &str, sig: i32, all: bool) -> Result<()> {
        let c = self.load(id)?;
        if self.status(&c) == Status::Stopped {
            bail!("container not running");
        }
        if all && !c.saved.cgroup_path.is_empty() {
            self.host().cgroup(&c.saved.cgroup_path)?.signal_all(sig)?;
            return Ok(());
        }
        self.host()
            .kill(c.saved.pid, sig)
            .with_context(|| format!("kill {}", c.saved.pid))
    }
}
