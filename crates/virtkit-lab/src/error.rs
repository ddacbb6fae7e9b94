//! The one error type of this crate.
//!
//! Lab failures (QEMU missing, the lab kernel not found, the lab not coming up, a
//! timeout) have their own variants so that a test can tell them apart from a failure
//! of the payload or of the guest it boots, which is reported through
//! [`LabOutput`](crate::LabOutput) instead.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building guest artifacts or running the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// `qemu-system-x86_64` is not installed and could not be installed.
    #[error("lab: qemu-system-x86_64 not found ({0}); install the Debian package qemu-system-x86")]
    QemuMissing(String),
    /// The lab's kernel (Debian's cloud kernel package) could not be fetched or unpacked.
    #[error("lab: lab kernel not found: {0}")]
    LabKernelNotFound(String),
    /// The lab VM started but never reached its init (or died before the payload ended).
    #[error("lab: the lab VM failed: {reason}\n--- lab console ---\n{console}")]
    LabFailed {
        /// What went wrong.
        reason: String,
        /// The lab's whole serial console.
        console: String,
    },
    /// The lab came up but `/dev/kvm` was not there (kvm-amd did not load).
    #[error(
        "lab: no /dev/kvm inside the lab (kvm-amd did not load)\n--- lab console ---\n{console}"
    )]
    LabKvmMissing {
        /// The lab's whole serial console.
        console: String,
    },
    /// The payload did not finish in time; the lab (or host process) was killed.
    #[error("lab: timed out after {after:?} (venue {venue})\n--- output so far ---\n{output}")]
    Timeout {
        /// The timeout that was exceeded.
        after: Duration,
        /// Where the payload ran.
        venue: crate::Venue,
        /// Everything printed until then.
        output: String,
    },
    /// Packages needed for a build or for the lab are missing and we are not root.
    #[error("missing Debian packages: {}; install them with `apt-get install {}` (or run as root)", .0.join(" "), .0.join(" "))]
    PackagesMissing(Vec<String>),
    /// A build or setup command failed.
    #[error("command `{command}` failed ({status}){}", fmt_tail(.output))]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// The caller gave something unusable (a missing payload file, a bad name, a bad env var).
    #[error("bad input: {0}")]
    BadInput(String),
    /// A file under `path` could not be read or written.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn fmt_tail(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("\n--- output (end) ---\n{output}")
    }
}

impl LabError {
    /// True for failures of the lab machinery itself (as opposed to bad input or a
    /// build failure): QEMU missing, lab kernel missing, lab VM failure, timeout.
    pub fn is_lab_failure(&self) -> bool {
        matches!(
            self,
            LabError::QemuMissing(_)
                | LabError::LabKernelNotFound(_)
                | LabError::LabFailed { .. }
                | LabError::LabKvmMissing { .. }
                | LabError::Timeout { .. }
        )
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| LabError::Io { what, path, source }
    }
}

/// Short for `Result<T, LabError>`.
pub type Result<T> = std::result::Result<T, LabError>;
