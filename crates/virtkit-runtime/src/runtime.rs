//! [`Runtime`]: a state root and the [`Host`] the verbs act through. Each verb is a
//! method defined in its own module (`create.rs`, `start.rs`, `kill.rs`...).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::host::{Host, LinuxHost};
use crate::state::{Container, Status};

/// The runtime: containers under one state root (runc's `--root`), acting on one host.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    host: Arc<dyn Host>,
}

impl Runtime {
    /// A runtime keeping its state under `root`, on this machine's kernel.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_host(root, Arc::new(LinuxHost))
    }

    /// A runtime acting through `host` (a recording double in tests).
    pub fn with_host(root: impl Into<PathBuf>, host: Arc<dyn Host>) -> Self {
        Runtime {
            root: root.into(),
            host,
        }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host the verbs act through.
    pub fn host(&self) -> &dyn Host {
        self.host.as_ref()
    }

    /// Loads the saved state of container `id`.
    pub fn load(&self, id: &str) -> Result<Container> {
        Container::load(&self.root, id)
    }

    /// The status of `c` now (from its saved state, its init and its cgroup).
    pub fn status(&self, c: &Container) -> Status {
        c.status(self.host())
    }

    /// `state`: the OCI state document of container `id`.
    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        Ok(self.load(id)?.oci_state(self.host()))
    }
}
