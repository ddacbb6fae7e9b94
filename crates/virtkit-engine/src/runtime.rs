//! The OCI runtime binary, driven as podman drives runc: `--root DIR VERB ...`.

use std::process::{Command, Stdio};

use crate::{Engine, EngineError};

/// What `runtime state ID` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RuntimeState {
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The container's init process (0 once stopped).
    #[serde(default)]
    pub pid: i32,
}

impl Engine {
    /// A command for the runtime with this engine's runtime state directory.
    pub fn runtime_command(&self) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(self.root.join("runtime"));
        c
    }

    fn runtime_error(&self, verb: &'static str, id: &str, detail: String) -> EngineError {
        EngineError::Runtime {
            runtime: self.runtime.clone(),
            verb,
            id: id.to_string(),
            detail,
        }
    }

    /// Runs `runtime VERB ARGS...` to completion, its output captured; an error with its
    /// message when it fails.
    pub(crate) fn runtime_call(
        &self,
        verb: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, EngineError> {
        let out = self
            .runtime_command()
            .arg(verb)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.runtime_error(verb, id, e.to_string()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(self.runtime_error(
                verb,
                id,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    /// The runtime's view of container `id`; `None` when it does not know it.
    pub fn runtime_state(&self, id: &str) -> Option<RuntimeState> {
        let out = self.runtime_call("state", id, &[id]).ok()?;
        serde_json::from_slice(&out).ok()
    }

    /// Sends `signal` (a name like `TERM` or a number) to the container's init.
    pub(crate) fn runtime_kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        self.runtime_call("kill", id, &[id, signal]).map(drop)
    }

    /// Deletes the runtime's record of `id` (and kills what is left of it).
    pub(crate) fn runtime_delete(&self, id: &str) {
        let _ = self.runtime_call("delete", id, &["--force", id]);
    }
}
