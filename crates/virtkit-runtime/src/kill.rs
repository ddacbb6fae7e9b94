//! `kill`: a signal to the container's init, or to every process of its cgroup.

use std::path::Path;

use crate::cgroup;
use crate::error::{bail, Context, Result};
use crate::state::{Container, Status};
use crate::util;

/// `kill`.
pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    let c = Container::load(root, id)?;
    if c.status() == Status::Stopped {
        bail!("container not running");
    }
    if all && !c.saved.cgroup_path.is_empty() {
        cgroup::open(&c.saved.cgroup_path)?.signal_all(sig)?;
        return Ok(());
    }
    util::kill(c.saved.pid, sig).with_context(|| format!("kill {}", c.saved.pid))
}
