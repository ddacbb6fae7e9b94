//! Network namespaces that outlive their processes: made by a thread of ours, kept by a
//! bind mount of its `/proc/thread-self/ns/net` on a file (as `ip netns add` and podman
//! do), entered by short-lived threads, so the calling thread's namespace never changes.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use virtkit_namespaces::syscalls::{LinuxSyscalls, Syscalls};

/// Errors from network namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// A system call failed.
    #[error("network namespace {path}: {source}")]
    Sys {
        /// The namespace file.
        path: PathBuf,
        /// The failed call.
        #[source]
        source: virtkit_namespaces::syscalls::SyscallError,
    },
    /// A file operation failed.
    #[error("network namespace {path}: {source}")]
    Io {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The work thread panicked or could not start.
    #[error("network namespace {0}: the thread that entered it failed")]
    Thread(PathBuf),
}

/// A network namespace kept alive by a bind mount at [`NetNs::path`].
#[derive(Debug, Clone)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Makes a new, empty network namespace (only `lo`, down) and pins it at `path`, a
    /// file that must not exist (its parent must). Nothing is left when it fails.
    pub fn create(path: &Path) -> Result<NetNs, NetNsError> {
        let io_err = |source| NetNsError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err)?;
        let target = path.to_path_buf();
        let made = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || {
                let sys = LinuxSyscalls;
                sys.unshare(libc::CLONE_NEWNET)?;
                sys.mount(
                    Some(Path::new("/proc/thread-self/ns/net")),
                    &target,
                    None,
                    libc::MS_BIND,
                    None,
                )
            })
            .map_err(|_| NetNsError::Thread(path.to_path_buf()))?
            .join()
            .map_err(|_| NetNsError::Thread(path.to_path_buf()))?;
        match made {
            Ok(()) => Ok(NetNs {
                path: path.to_path_buf(),
            }),
            Err(source) => {
                let _ = std::fs::remove_file(path);
                Err(NetNsError::Sys {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }

    /// The namespace pinned at `path` (not checked until used).
    pub fn at(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    /// The file that pins it (what an OCI spec's network namespace `path` names).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace (for `setns` or moving a link into it).
    pub fn open(&self) -> Result<File, NetNsError> {
        File::open(&self.path).map_err(|source| NetNsError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Runs `f` in a new thread that has joined the namespace, and returns its result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetNsError> {
        let ns = self.open()?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("netns-enter".into())
            .spawn(move || {
                LinuxSyscalls
                    .setns(ns.as_fd(), libc::CLONE_NEWNET)
                    .map(|()| f())
                    .map_err(|source| NetNsError::Sys { path, source })
            })
            .map_err(|_| NetNsError::Thread(self.path.clone()))?
            .join()
            .map_err(|_| NetNsError::Thread(self.path.clone()))?
    }

    /// Unpins and removes the namespace file (the namespace goes when its last process
    /// does, its interfaces with it). A missing file is not an error.
    pub fn remove(path: &Path) -> Result<(), NetNsError> {
        match LinuxSyscalls.umount2(path, libc::MNT_DETACH) {
            Ok(()) => {}
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
            Err(source) => {
                return Err(NetNsError::Sys {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetNsError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}
