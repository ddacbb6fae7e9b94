//! The engine's errors.

use std::path::PathBuf;

/// What can go wrong managing containers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An image store error (unknown image, bad layer...).
    #[error(transparent)]
    Image(#[from] virtkit_image::ImageError),
    /// A network record or address error.
    #[error(transparent)]
    Ipam(#[from] virtkit_net::ipam::IpamError),
    /// Attaching to a network failed.
    #[error(transparent)]
    Attach(#[from] virtkit_net::container::AttachError),
    /// A network namespace error.
    #[error(transparent)]
    NetNs(#[from] virtkit_net::netns::NetNsError),
    /// A bad `-p` spec.
    #[error(transparent)]
    PortSpec(#[from] virtkit_net::ports::PortSpecError),
    /// The host port is taken.
    #[error("cannot publish {port}: the host port is already in use ({source})")]
    PortInUse {
        /// The mapping.
        port: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// No container has that name or id.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// The name is taken.
    #[error("the container name {name:?} is already in use by container {id}")]
    NameInUse {
        /// The name.
        name: String,
        /// The id of the container holding it.
        id: String,
    },
    /// A bad option (name, volume spec, restart policy...).
    #[error("{0}")]
    BadOption(String),
    /// The container is in the wrong state for the verb.
    #[error("container {name}: {why}")]
    State {
        /// The container's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The OCI runtime failed.
    #[error("the runtime {runtime} failed to {verb} {id}: {detail}")]
    Runtime {
        /// The runtime binary.
        runtime: PathBuf,
        /// The verb (`run`, `kill`...).
        verb: &'static str,
        /// The container.
        id: String,
        /// Its message or exit status.
        detail: String,
    },
    /// The container's monitor failed to start it.
    #[error("container {id} did not start: {detail}")]
    Start {
        /// The container.
        id: String,
        /// What the monitor reported.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record is not valid JSON of the right shape.
    #[error("corrupt record {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

impl EngineError {
    /// A closure making an [`EngineError::Io`] for `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |source| EngineError::Io { what, path, source }
    }
}
