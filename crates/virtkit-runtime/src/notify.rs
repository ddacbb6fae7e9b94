//! `SCMP_ACT_NOTIFY`: the seccomp listener fd of a container's process, handed to the
//! program at `linux.seccomp.listenerPath` as runc hands it: one message on a unix
//! stream socket, the fd as SCM_RIGHTS and, as data, the JSON
//! `{"ociVersion", "fds": ["seccompFd"], "pid", "metadata", "state"}`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use oci_spec::runtime::LinuxSeccomp;

use crate::error::{bail, Context, Result};
use crate::util;

/// Where the listener fd goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    path: PathBuf,
    metadata: String,
}

/// The listener of `seccomp`, checked against its rules: notify rules need a
/// `listenerPath`, and a `listenerPath` (or metadata) needs a notify rule.
pub(crate) fn listener(seccomp: Option<&LinuxSeccomp>, notifies: bool) -> Result<Option<Listener>> {
    let path = seccomp.and_then(|s| s.listener_path().clone());
    let metadata = seccomp.and_then(|s| s.listener_metadata().clone());
    match (notifies, path) {
        (true, Some(path)) => Ok(Some(Listener {
            path,
            metadata: metadata.unwrap_or_default(),
        })),
        (true, None) => {
            bail!("seccomp rules use SCMP_ACT_NOTIFY but linux.seccomp.listenerPath is not set")
        }
        (false, Some(_)) => {
            bail!("linux.seccomp.listenerPath is set but no seccomp rule uses SCMP_ACT_NOTIFY")
        }
        (false, None) if metadata.is_some() => {
            bail!("linux.seccomp.listenerMetadata is set but no seccomp rule uses SCMP_ACT_NOTIFY")
        }
        (false, None) => Ok(None),
    }
}

impl Listener {
    /// Sends `fd` (the listener of process `pid`) with the container `state`.
    pub(crate) fn send(&self, fd: &OwnedFd, pid: i32, state: serde_json::Value) -> Result<()> {
        let msg = serde_json::json!({
            "ociVersion": crate::OCI_VERSION,
            "fds": ["seccompFd"],
            "pid": pid,
            "metadata": self.metadata,
            "state": state,
        });
        let sock = std::os::unix::net::UnixStream::connect(&self.path)
            .with_context(|| format!("connect to seccomp listener {}", self.path.display()))?;
        util::send_fd(sock.as_raw_fd(), fd.as_raw_fd(), msg.to_string().as_bytes())
            .with_context(|| format!("send the seccomp fd to {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seccomp(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn listener_and_notify_rules_go_together() {
        let with = seccomp(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock", "listenerMetadata": "m"}"#,
        );
        let without = seccomp(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
        let l = listener(Some(&with), true).unwrap().unwrap();
        assert_eq!(
            (l.path.to_str(), l.metadata.as_str()),
            (Some("/run/l.sock"), "m")
        );
        assert!(listener(Some(&without), true).is_err());
        assert!(listener(Some(&with), false).is_err());
        assert_eq!(listener(Some(&without), false).unwrap(), None);
        assert_eq!(listener(None, false).unwrap(), None);
    }
}
