//! The crate's one error type.

use std::path::PathBuf;

use crate::Digest;

/// What can go wrong storing blobs or unpacking layers.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A digest string that is not `sha256:` and 64 lowercase hex digits.
    #[error("bad digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    BadDigest(String),
    /// Content whose digest is not the one expected.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the manifest (or caller) said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Content larger than allowed.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// What.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// An image config, or flags on top of it, that make no container.
    #[error("image config: {0}")]
    BadConfig(String),
    /// A registry that could not be reached, refused, or answered an error.
    #[error("registry: {0}")]
    Registry(String),
    /// A blob the store does not hold.
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    /// A layer entry refused (a path leaving the layer, a hard link to outside, a kind
    /// of entry that cannot be unpacked).
    #[error("layer entry {path:?}: {why}")]
    BadEntry {
        /// The entry's path as the archive names it.
        path: String,
        /// Why it is refused.
        why: String,
    },
    /// The archive itself (truncated, corrupt compression, bad headers).
    #[error("layer archive: {0}")]
    Archive(#[source] std::io::Error),
    /// A file system operation.
    #[error("{what} {path}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        error: std::io::Error,
    },
    /// A Dockerfile line that cannot be parsed, or an instruction that cannot be built.
    #[error("Dockerfile line {line}: {why}")]
    Dockerfile {
        /// The line (1-based) where the instruction starts.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A `RUN` step of a build that exited with a non-zero status.
    #[error("build step {step} ({instruction}) failed with status {status}")]
    StepFailed {
        /// The step's number (1-based, as `docker build` counts).
        step: usize,
        /// The instruction as written.
        instruction: String,
        /// The exit status the runner reported.
        status: i32,
    },
    /// The [`crate::build::StepRunner`] could not run a step at all.
    #[error("build step {step}: the runner failed: {why}")]
    Runner {
        /// The step's number.
        step: usize,
        /// What the runner said.
        why: String,
    },
    /// A system call inside the layer directory.
    #[error(transparent)]
    Sys(#[from] virtkit_namespaces::syscalls::SyscallError),
}

impl ImageError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| ImageError::Io { what, path, error }
    }
}
