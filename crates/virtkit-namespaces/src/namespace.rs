//! Namespace kinds, creating them (`unshare`) and joining them by path (`setns`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::syscalls::{SyscallError, Syscalls};

/// Errors from creating or joining namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A namespace type name that is not one of the eight Linux has.
    #[error("unknown namespace type {0:?}")]
    UnknownType(String),
    /// The namespace file could not be opened.
    #[error("open namespace {}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A syscall failed.
    #[error(transparent)]
    Sys(#[from] SyscallError),
}

/// One of Linux's namespace types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceType {
    /// Mount namespace (`CLONE_NEWNS`).
    Mount,
    /// PID namespace (`CLONE_NEWPID`).
    Pid,
    /// UTS (hostname) namespace.
    Uts,
    /// IPC namespace.
    Ipc,
    /// Network namespace.
    Net,
    /// User namespace.
    User,
    /// Cgroup namespace.
    Cgroup,
    /// Time namespace.
    Time,
}

impl NamespaceType {
    /// All eight, in the order a joining process should enter them (user first, mount
    /// last so paths to the other namespace files stay valid).
    pub const JOIN_ORDER: [NamespaceType; 8] = [
        NamespaceType::User,
        NamespaceType::Ipc,
        NamespaceType::Uts,
        NamespaceType::Net,
        NamespaceType::Pid,
        NamespaceType::Cgroup,
        NamespaceType::Time,
        NamespaceType::Mount,
    ];

    /// The `CLONE_NEW*` flag.
    pub fn clone_flag(self) -> i32 {
        match self {
            NamespaceType::Mount => libc::CLONE_NEWNS,
            NamespaceType::Pid => libc::CLONE_NEWPID,
            NamespaceType::Uts => libc::CLONE_NEWUTS,
            NamespaceType::Ipc => libc::CLONE_NEWIPC,
            NamespaceType::Net => libc::CLONE_NEWNET,
            NamespaceType::User => libc::CLONE_NEWUSER,
            NamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            NamespaceType::Time => 0x80, // CLONE_NEWTIME
        }
    }

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NamespaceType::Mount => "mnt",
            NamespaceType::Pid => "pid",
            NamespaceType::Uts => "uts",
            NamespaceType::Ipc => "ipc",
            NamespaceType::Net => "net",
            NamespaceType::User => "user",
            NamespaceType::Cgroup => "cgroup",
            NamespaceType::Time => "time",
        }
    }

    /// Parses an OCI namespace type name ("mount", "network", "pid", ...).
    pub fn from_oci(name: &str) -> Result<Self, NamespaceError> {
        Ok(match name {
            "mount" | "mnt" => NamespaceType::Mount,
            "pid" => NamespaceType::Pid,
            "uts" => NamespaceType::Uts,
            "ipc" => NamespaceType::Ipc,
            "network" | "net" => NamespaceType::Net,
            "user" => NamespaceType::User,
            "cgroup" => NamespaceType::Cgroup,
            "time" => NamespaceType::Time,
            other => return Err(NamespaceError::UnknownType(other.to_string())),
        })
    }
}

/// The combined `CLONE_NEW*` flags of `types`.
pub fn clone_flags(types: &[NamespaceType]) -> i32 {
    types.iter().fold(0, |acc, t| acc | t.clone_flag())
}

/// Creates new namespaces of the given types for the calling process. A new PID or time
/// namespace applies to the children created afterwards.
pub fn unshare(sys: &impl Syscalls, types: &[NamespaceType]) -> Result<(), NamespaceError> {
    if types.is_empty() {
        return Ok(());
    }
    sys.unshare(clone_flags(types))?;
    Ok(())
}

/// Joins the namespace at `path` (`/proc/<pid>/ns/<kind>` or a bind-mounted file).
pub fn join(
    sys: &impl Syscalls,
    path: &Path,
    kind: Option<NamespaceType>,
) -> Result<(), NamespaceError> {
    let f = File::open(path).map_err(|source| NamespaceError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    sys.setns(f.as_fd(), kind.map_or(0, NamespaceType::clone_flag))?;
    Ok(())
}

/// Sets the hostname (in the calling process's UTS namespace).
pub fn set_hostname(sys: &impl Syscalls, name: &str) -> Result<(), NamespaceError> {
    sys.sethostname(name)?;
    Ok(())
}

/// Sets the NIS domain name (in the calling process's UTS namespace).
pub fn set_domainname(sys: &impl Syscalls, name: &str) -> Result<(), NamespaceError> {
    sys.setdomainname(name)?;
    Ok(())
}
