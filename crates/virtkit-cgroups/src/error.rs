//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate. File errors name the file and,
/// for writes, the value that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a control file failed.
    #[error("writing {value:?} to {}: {source}", path.display())]
    Write {
        /// The control file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading a control file (or a /proc file) failed.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file was read but its content did not parse.
    #[error("parsing {}: {reason} (content {content:?})", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending content (possibly one line of it).
        content: String,
        /// What was wrong.
        reason: String,
    },
    /// Creating a cgroup directory failed.
    #[error("creating cgroup directory {}: {source}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Removing a cgroup directory failed (after retries for EBUSY).
    #[error("removing cgroup directory {} (after {attempts} attempts): {source}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// How many rmdir attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// Listing a cgroup directory failed.
    #[error("listing {}: {source}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Sending a signal to a process of the cgroup failed.
    #[error("sending signal {signal} to pid {pid}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: i32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A state change (freeze, thaw, kill) did not complete in time.
    #[error("{what} in {}: not done after {waited_ms} ms", path.display())]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A bpf(2) call for the v2 device controller failed.
    #[error("{op} {}: {source}{}", path.display(), if log.is_empty() { String::new() } else { format!(" (verifier: {log})") })]
    Bpf {
        /// What was being done ("attaching the device program to"...).
        op: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
        /// The verifier log, when loading failed.
        log: String,
    },
    /// A requested resource value is invalid (before anything is written).
    #[error("invalid resource {field}: {reason}")]
    InvalidResource {
        /// The field of [`crate::Resources`].
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A resource needs a controller that is not available.
    #[error("controller {controller} is not available (needed for {field})")]
    MissingController {
        /// The controller.
        controller: String,
        /// The field of [`crate::Resources`] that needs it.
        field: &'static str,
    },
    /// The cgroup path given is not a plain relative path.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// No usable cgroup hierarchy was found.
    #[error("no cgroup hierarchy found: {0}")]
    NoHierarchy(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
