//! `update`: new resource limits for a running container.

use crate::cgroup;
use crate::error::{Context, Result};
use crate::Runtime;

impl Runtime {
    /// `update --resources`: applies `resources_json` (an OCI `linux.resources`
    /// object) to container `id`'s cgroup.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.load(id)?;
        let r: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json).context("parse resources JSON")?;
        let resources = cgroup::update_resources(&r)?;
        self.host()
            .cgroup(&c.saved.cgroup_path)?
            .apply(&resources)?;
        Ok(())
    }
}
