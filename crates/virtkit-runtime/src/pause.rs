//! `pause` and `resume`: freeze and thaw the container's cgroup.

use crate::error::{bail, Result};
use crate::state::Status;
use crate::Runtime;

impl Runtime {
    /// `pause`: freezes every process of container `id` (its cgroup's freezer).
    pub fn pause(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        let s = self.status(&c);
        if s != Status::Running && s != Status::Created {
            bail!("container not running");
        }
        self.host().cgroup(&c.saved.cgroup_path)?.freeze()?;
        Ok(())
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        if self.status(&c) != Status::Paused {
            bail!("container not paused");
        }
        self.host().cgroup(&c.saved.cgroup_path)?.thaw()?;
        Ok(())
    }
}
