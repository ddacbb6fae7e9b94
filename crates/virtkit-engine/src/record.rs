//! A container's record: `containers/ID/record.json`, what every later command (and the
//! container's monitor) knows of it, changed under a per-container `flock`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtkit_net::ports::PortMapping;

use crate::EngineError;

/// When the monitor starts a container again after it exits (`--restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When it exits with a non-zero status.
    OnFailure,
    /// Whatever its status, until it is stopped by hand.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" | "unless-stopped" => Ok(RestartPolicy::Always),
            _ => Err(EngineError::BadOption(format!(
                "invalid restart policy {s:?}: no, on-failure or always"
            ))),
        }
    }
}

/// Where a container's network stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A network namespace of its own on this network.
    Bridge(String),
    /// A network namespace with only `lo`.
    None,
    /// The host's network namespace.
    Host,
}

/// The lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started.
    Created,
    /// Its monitor runs it.
    Running,
    /// It exited (or its monitor died).
    Exited,
}

/// Everything kept about a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The id (64 hex digits).
    pub id: String,
    /// The name.
    pub name: String,
    /// The image as named at creation.
    pub image: String,
    /// The command (entrypoint and arguments) as the spec has it.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The state.
    pub status: Status,
    /// The last exit status (`None` before the first exit).
    pub exit_code: Option<i32>,
    /// The monitor's pid while it runs, and its start time (`/proc/PID/stat` field 22),
    /// so a reused pid is not taken for it.
    pub monitor: Option<(i32, u64)>,
    /// The network.
    pub network: NetworkMode,
    /// The address it holds while running.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Published ports, host ports as chosen at the last start.
    pub ports: Vec<PortMapping>,
    /// The restart policy.
    pub restart: RestartPolicy,
    /// How many times the monitor started it again.
    pub restarts: u32,
    /// Set by `stop` and `kill`, cleared by `start`: no restart.
    pub stopped_by_user: bool,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// The signal `stop` sends first (the image's StopSignal, else SIGTERM).
    pub stop_signal: String,
}

impl Record {
    /// The first 12 characters of the id, as `ps` shows it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// The directory of container `id` under the containers directory `dir`.
pub fn dir_of(containers: &Path, id: &str) -> PathBuf {
    containers.join(id)
}

/// Reads the record in `dir`.
pub fn load(dir: &Path) -> Result<Record, EngineError> {
    let p = dir.join("record.json");
    let b = std::fs::read(&p).map_err(EngineError::io("cannot read", &p))?;
    serde_json::from_slice(&b).map_err(|e| EngineError::Corrupt {
        path: p,
        detail: e.to_string(),
    })
}

/// Writes the record into `dir` atomically.
pub fn save(dir: &Path, r: &Record) -> Result<(), EngineError> {
    let p = dir.join("record.json");
    let tmp = dir.join("record.json.tmp");
    let text = serde_json::to_vec_pretty(r).map_err(|e| EngineError::Corrupt {
        path: p.clone(),
        detail: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(EngineError::io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &p).map_err(EngineError::io("cannot write", &p))
}

/// An exclusive `flock` on `path` (created when missing), held until dropped.
pub(crate) fn lock(path: &Path) -> Result<File, EngineError> {
    let f = File::create(path).map_err(EngineError::io("cannot create", path))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(EngineError::io("cannot lock", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

/// Loads, changes and saves the record in `dir` under its lock; returns the new record.
pub fn update(dir: &Path, f: impl FnOnce(&mut Record)) -> Result<Record, EngineError> {
    let _l = lock(&dir.join("record.lock"))?;
    let mut r = load(dir)?;
    f(&mut r);
    save(dir, &r)?;
    Ok(r)
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), `None` if it is gone
/// or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace();
    // A zombie is dead, whether or not its parent has reaped it yet.
    if matches!(fields.next(), Some("Z") | Some("X") | None) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the monitor recorded in `r` is still alive.
pub fn monitor_alive(r: &Record) -> bool {
    r.monitor.is_some_and(|(pid, t)| start_time(pid) == Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_policies_parse() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
        assert_eq!(
            "on-failure".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure
        );
        assert!("sometimes".parse::<RestartPolicy>().is_err());
    }
}
