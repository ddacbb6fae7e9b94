//! The runtime's error type: a typed kind for what a caller may want to act on (a
//! container that does not exist, an id already taken, bad input), and a chain of
//! context lines, each naming the step that failed, down to the OS error.
//!
//! `Display` prints the outermost line; `{:#}` through `anyhow` (or walking
//! [`std::error::Error::source`]) prints the whole chain, as runc's messages do:
//! `create container: mount /proc: EPERM`.

use std::fmt::Display;
use std::io;

/// A boxed error from a layer below (namespaces, cgroups, seccomp, serde, the OS).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything the runtime's operations can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this id under the state root.
    #[error("container {id} does not exist")]
    NotFound {
        /// The container id asked for.
        id: String,
    },
    /// A container with this id already exists.
    #[error("container with id {id} already exists")]
    Exists {
        /// The container id asked for.
        id: String,
    },
    /// Bad input: an invalid id, spec field, flag or request.
    #[error("{0}")]
    Invalid(String),
    /// An OS error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// From virtkit-namespaces: setting up the root filesystem.
    #[error(transparent)]
    Rootfs(#[from] virtkit_namespaces::rootfs::RootfsError),
    /// From virtkit-namespaces: writing uid/gid maps.
    #[error(transparent)]
    IdMap(#[from] virtkit_namespaces::idmap::IdMapError),
    /// From virtkit-namespaces: creating or joining namespaces.
    #[error(transparent)]
    Namespace(#[from] virtkit_namespaces::namespace::NamespaceError),
    /// From virtkit-namespaces: one system call.
    #[error(transparent)]
    Syscall(#[from] virtkit_namespaces::syscalls::SyscallError),
    /// From virtkit-cgroups.
    #[error(transparent)]
    Cgroups(#[from] virtkit_cgroups::Error),
    /// From virtkit-seccomp (compiling or installing the profile).
    #[error(transparent)]
    Seccomp(#[from] virtkit_seccomp::Error),
    /// Malformed JSON (a state file, `--process`, `update`'s resources).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A string with a NUL byte where the kernel takes a C string.
    #[error(transparent)]
    Nul(#[from] std::ffi::NulError),
    /// A failure below this step, with the step named.
    #[error("{context}")]
    Context {
        /// The step that failed.
        context: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// An [`Error::Invalid`] from a message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// The innermost runtime error of the chain (the one under all context lines),
    /// when it is one of ours: how a caller tells [`Error::NotFound`] behind context.
    pub fn kind(&self) -> &Error {
        let mut e = self;
        while let Error::Context { source, .. } = e {
            match source.downcast_ref::<Error>() {
                Some(inner) => e = inner,
                None => break,
            }
        }
        e
    }

    /// True when the container asked for does not exist (behind any context).
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind(), Error::NotFound { .. })
    }
}

/// The whole chain of `e` on one line, `outer: inner: os error`, as `anyhow`'s `{:#}`
/// prints it.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a context line to an error, as a step name: `.context("mount /proc")`.
pub trait Context<T> {
    /// Wraps the error with `context`.
    fn context<C: Display>(self, context: C) -> Result<T>;
    /// Wraps the error with a context line computed only on failure.
    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context<C: Display>(self, context: C) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.to_string(),
            source: Box::new(e),
        })
    }

    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f().to_string(),
            source: Box::new(e),
        })
    }
}

/// A missing value as an [`Error::Invalid`] carrying the context line.
impl<T> Context<T> for Option<T> {
    fn context<C: Display>(self, context: C) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(context.to_string()))
    }

    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(f().to_string()))
    }
}

/// Returns early with an [`Error::Invalid`] built like `format!`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($t)*)))
    };
}
pub(crate) use bail;

/// An [`Error::Invalid`] built like `format!`.
macro_rules! err {
    ($($t:tt)*) => {
        $crate::error::Error::Invalid(format!($($t)*))
    };
}
pub(crate) use err;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chain_prints_like_runc() {
        let e: Result<()> = Err(io::Error::from_raw_os_error(libc::EPERM)).context("mount /proc");
        let e = e.context("create container").unwrap_err();
        assert_eq!(e.to_string(), "create container");
        let chain: Vec<String> =
            std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .map(ToString::to_string)
            .collect();
        assert_eq!(chain[1], "mount /proc");
        assert!(chain[2].contains("Operation not permitted"), "{chain:?}");
    }

    #[test]
    fn not_found_is_seen_behind_context() {
        let e: Result<()> = Err(Error::NotFound { id: "x".into() });
        let e = e.context("delete x").unwrap_err();
        assert!(e.is_not_found());
        assert!(!Error::invalid("bad").is_not_found());
        assert_eq!(Some(1).context("none").unwrap(), 1);
        let none: Option<u8> = None;
        assert_eq!(
            none.context("no PID column").unwrap_err().to_string(),
            "no PID column"
        );
    }
}
