//! `update`: new resource limits for a running container.

use std::path::Path;

use crate::cgroup;
use crate::error::{Context, Result};
use crate::state::Container;

/// `update --resources`.
pub fn update(root: &Path, id: &str, resources_json: &[u8]) -> Result<()> {
    let c = Container::load(root, id)?;
    let r: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(resources_json).context("parse resources JSON")?;
    let cg = cgroup::open(&c.saved.cgroup_path)?;
    cg.apply(&cgroup::update_resources(&r)?)?;
    Ok(())
}
