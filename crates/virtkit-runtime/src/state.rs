//! Container state kept under `--root/<id>/`: `state.json` and `exec.fifo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Error, Result};
use serde::{Deserialize, Serialize};

use crate::host::Host;

/// The container status, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `create` has not finished.
    Creating,
    /// Init waits for `start`.
    Created,
    /// The user process runs.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// The init process has exited.
    Stopped,
}

impl Status {
    /// The spec's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What we keep on disk about one container.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Saved {
    /// Container id.
    pub id: String,
    /// Host pid of the init process (0 before it exists).
    pub pid: i32,
    /// Its start time in clock ticks, to tell it from a reused pid.
    pub start_time: u64,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    /// The config's annotations.
    pub annotations: BTreeMap<String, String>,
    /// cgroup path relative to the hierarchy roots (empty when none).
    pub cgroup_path: String,
    /// `create` finished successfully.
    pub create_done: bool,
    /// Owner user name.
    pub owner: String,
}

/// The container's directory under the state root.
#[derive(Debug, Clone)]
pub struct Container {
    /// `<root>/<id>`.
    pub dir: PathBuf,
    /// The saved state.
    pub saved: Saved,
}

/// Validates a container id the way runc does (no path tricks).
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if !ok {
        bail!("invalid container id {id:?}: use letters, digits, '_', '+', '-', '.'");
    }
    Ok(())
}

impl Container {
    /// Path of `state.json`.
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Path of the exec fifo.
    pub fn fifo(&self) -> PathBuf {
        self.dir.join("exec.fifo")
    }

    /// Loads container `id` from `root`.
    pub fn load(root: &Path, id: &str) -> Result<Self> {
        check_id(id)?;
        let dir = root.join(id);
        let data = std::fs::read(Self::state_file(&dir)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound { id: id.to_string() }
            } else {
                Error::Context {
                    context: format!("read state of {id}"),
                    source: Box::new(e),
                }
            }
        })?;
        let saved: Saved = serde_json::from_slice(&data)
            .with_context(|| format!("parse {}", Self::state_file(&dir).display()))?;
        Ok(Self { dir, saved })
    }

    /// Writes `state.json` atomically (write to a temp file, then rename).
    pub fn save(&self) -> Result<()> {
        let tmp = self.dir.join(".state.json.tmp");
        let data = serde_json::to_vec(&self.saved)?;
        std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, Self::state_file(&self.dir))
            .with_context(|| format!("rename {}", tmp.display()))?;
        Ok(())
    }

    /// The current status, from the init process, the fifo and the freezer.
    /// Removes the state directory: `state.json`, then the directory; if anything else
    /// is still there (`exec.fifo` of a never-started container), the whole tree.
    pub fn remove_dir(&self) -> Result<()> {
        let _ = std::fs::remove_file(Self::state_file(&self.dir));
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("remove {}", self.dir.display())),
        }
    }

    /// The status now, from the saved state and whether init is still alive (and
    /// frozen).
    pub fn status(&self, host: &dyn Host) -> Status {
        if !self.saved.create_done {
            if host.alive(self.saved.pid, self.saved.start_time) {
                return Status::Creating;
            }
            return Status::Stopped;
        }
        if !host.alive(self.saved.pid, self.saved.start_time) {
            return Status::Stopped;
        }
        if self.fifo().exists() {
            return Status::Created;
        }
        if self.frozen(host) {
            return Status::Paused;
        }
        Status::Running
    }

    fn frozen(&self, host: &dyn Host) -> bool {
        if self.saved.cgroup_path.is_empty() {
            return false;
        }
        host.cgroup(&self.saved.cgroup_path)
            .and_then(|c| Ok(c.freezer_state()?))
            .map(|s| s == virtkit_cgroups::FreezerState::Frozen)
            .unwrap_or(false)
    }

    /// The OCI state JSON (runc's field order).
    pub fn oci_state(&self, host: &dyn Host) -> serde_json::Value {
        let status = self.status(host);
        let pid = if status == Status::Stopped {
            0
        } else {
            self.saved.pid
        };
        serde_json::json!({
            "ociVersion": crate::OCI_VERSION,
            "id": self.saved.id,
            "pid": pid,
            "status": status.as_str(),
            "bundle": self.saved.bundle,
            "rootfs": self.saved.rootfs,
            "created": self.saved.created,
            "owner": self.saved.owner,
            "annotations": self.saved.annotations,
        })
    }
}
