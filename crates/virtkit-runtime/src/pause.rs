//! `pause` and `resume`: freeze and thaw the container's cgroup.

use std::path::Path;

use crate::cgroup;
use crate::error::{bail, Result};
use crate::state::{Container, Status};

/// `pause`: freezes every process of the container (its cgroup's freezer).
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    let s = c.status();
    if s != Status::Running && s != Status::Created {
        bail!("container not running");
    }
    cgroup::open(&c.saved.cgroup_path)?.freeze()?;
    Ok(())
}

/// `resume`: thaws a paused container.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    if c.status() != Status::Paused {
        bail!("container not paused");
    }
    cgroup::open(&c.saved.cgroup_path)?.thaw()?;
    Ok(())
}
