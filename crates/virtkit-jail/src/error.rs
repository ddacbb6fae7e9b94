//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong setting up, entering or cleaning a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A configuration that cannot work, found before anything was made.
    #[error("jail config: {0}")]
    Config(String),
    /// A file or directory on the host.
    #[error("jail: {what} {path}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        error: std::io::Error,
    },
    /// The jail's cgroup.
    #[error("jail cgroup: {0}")]
    Cgroup(#[from] virtkit_cgroups::Error),
    /// A mount, pivot or namespace step inside the jail.
    #[error("jail root: {0}")]
    Sys(#[from] virtkit_namespaces::syscalls::SyscallError),
    /// The set-up inside the jail failed (the child's own message).
    #[error("jail set-up: {0}")]
    Inside(String),
    /// A system call of the jail's own.
    #[error("jail: {call}: {error}")]
    Os {
        /// The call.
        call: &'static str,
        /// The error.
        #[source]
        error: std::io::Error,
    },
}

impl JailError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| JailError::Io { what, path, error }
    }

    pub(crate) fn last(call: &'static str) -> Self {
        JailError::Os {
            call,
            error: std::io::Error::last_os_error(),
        }
    }
}
