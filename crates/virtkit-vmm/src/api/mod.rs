//! The control API: Cloud Hypervisor's REST API (HTTP/1.1, JSON bodies) on a Unix socket,
//! so its `ch-remote`, the `cloud-hypervisor-client` crate and libvirt's ch driver can
//! drive a virtkit VM.
//!
//! | request | answer | errors (Cloud Hypervisor's statuses) |
//! |---|---|---|
//! | `GET /api/v1/vmm.ping` | 200, `{"build_version", "version", "pid", "features"}` | |
//! | `PUT /api/v1/vmm.shutdown` | 200; stops the VM, then the server | |
//! | `PUT /api/v1/vm.create`, body: a [`VmConfig`] | 204 | 400 no body or bad JSON, 500 already created |
//! | `PUT /api/v1/vm.boot` | 204; builds and starts the VM (resumes a paused one) | 404 not created, 500 running or the build failed (with its message) |
//! | `GET /api/v1/vm.info` | 200, `{"config", "state", "memory_actual_size"}` | 404 not created |
//! | `PUT /api/v1/vm.pause`, `vm.resume` | 204 | 500 not booted or in the wrong state |
//! | `PUT /api/v1/vm.shutdown` | 204; stops the VM, keeps the config | 500 not booted |
//! | `PUT /api/v1/vm.reboot` | 204; stops the VM, boots a fresh one from the config | 404 not booted |
//! | `PUT /api/v1/vm.power-button` | 204; ACPI power button press | 500 not booted |
//! | `PUT /api/v1/vm.delete` | 204; stops the VM, forgets the config | |
//!
//! Any other path: 404 (501 for Cloud Hypervisor endpoints virtkit lacks, such as
//! `vm.snapshot`); a wrong method, or a body on a bodiless `PUT`: 400. Error bodies are Cloud
//! Hypervisor's, a JSON array of messages from the outermost to the root cause. Malformed
//! requests get 400, bodies over the limit 413, requests that do not arrive in time 408, and
//! connections past the limit 503 (see [`Limits`]); each connection is served on a thread of
//! its own, so a slow or stalled client holds neither the VM nor other clients.
//!
//! The server ends when `vmm.shutdown` is answered, or when the booted VM ends on its own
//! (the guest powers off or resets, or the VM fails), as Cloud Hypervisor's process does; a
//! VM stopped through the API (`vm.shutdown`, `vm.reboot`, `vm.delete`) does not end it.
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use virtkit_vcpu::KvmHypervisor;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Wait for vm.create and vm.boot, e.g. `ch-remote --api-socket /tmp/vm.sock create vm.json`.
//! let end = virtkit_vmm::api::serve(
//!     Path::new("/tmp/vm.sock"),
//!     Arc::new(KvmHypervisor::default()),
//!     None,
//! )?;
//! println!("{end:?}");
//! # Ok(()) }
//! ```

mod http;
mod routes;
mod server;
mod slot;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtkit_vcpu::{EventFd, Hypervisor};

pub use http::{HttpError, Limits};
pub use routes::{RouteError, API_ROOT};
pub use server::ServerError;
pub use slot::{SlotError, STOP_TIMEOUT};

use crate::builder::VmmBuilder;
use crate::config::VmConfig;
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::vmm::{VmEnd, Vmm};

/// Errors that end (or prevent) the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API threads' seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(SeccompError),
    /// A server already answers on the socket path.
    #[error("API socket {0}: another server is listening there")]
    InUse(PathBuf),
    /// The path exists and is not a socket (it is left alone).
    #[error("API socket {0}: the path exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket could not be made.
    #[error("API socket {path}: {error}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The VM given to boot or restore at start could not start.
    #[error("starting the VM: {0}")]
    Boot(SlotError),
    /// The booted VM ended with an error.
    #[error(transparent)]
    VmFailed(SlotError),
    /// The server loop failed.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// The socket file; removed on drop while it is still the one this server made.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if now.ok() == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A bound API socket, ready to [`ApiServer::serve`].
pub struct ApiServer {
    listener: UnixListener,
    socket: SocketFile,
    hypervisor: Arc<dyn Hypervisor>,
    limits: Limits,
    configure: Option<slot::Configure>,
    seccomp: SeccompMode,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("socket", &self.socket.path)
            .field("hypervisor", &self.hypervisor.name())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn socket_error(path: &Path) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |error| ApiError::Socket {
        path: path.to_path_buf(),
        error,
    }
}

impl ApiServer {
    /// Binds `socket` for VMs on `hypervisor`. A stale socket file (no server answers) is
    /// replaced; a live one, or a path that is not a socket, is refused.
    pub fn bind(socket: &Path, hypervisor: Arc<dyn Hypervisor>) -> Result<ApiServer, ApiError> {
        match std::fs::symlink_metadata(socket) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(ApiError::NotASocket(socket.to_path_buf()))
            }
            Ok(_) => match UnixStream::connect(socket) {
                Ok(_) => return Err(ApiError::InUse(socket.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    log::info!("replacing stale API socket {}", socket.display());
                    std::fs::remove_file(socket).map_err(socket_error(socket))?;
                }
                Err(e) => return Err(socket_error(socket)(e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_error(socket)(e)),
        }
        let listener = UnixListener::bind(socket).map_err(socket_error(socket))?;
        let id = std::fs::symlink_metadata(socket)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        let socket = SocketFile {
            path: socket.to_path_buf(),
            id,
        };
        listener
            .set_nonblocking(true)
            .map_err(socket_error(&socket.path))?;
        Ok(ApiServer {
            listener,
            socket,
            hypervisor,
            limits: Limits::default(),
            configure: None,
            seccomp: SeccompMode::Off,
        })
    }

    /// Filters every thread in `mode` (see [`crate::seccomp`]): the API's threads with
    /// [`ThreadKind::Api`] from the moment it serves, and each VM it builds as
    /// [`VmmBuilder::seccomp`] does. Off by default.
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }

    /// Serves with these limits instead of the defaults.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Calls `f` on each VM's builder before it is built (every boot and reboot), to add
    /// what a [`VmConfig`] cannot say: a serial output, a start-up hook.
    pub fn configure_vmm(
        mut self,
        f: impl Fn(VmmBuilder) -> VmmBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Restores the snapshot in `dir` at once (resumed when `resume`, else paused until
    /// `vm.resume`), then serves as [`ApiServer::serve`] does.
    pub fn serve_restored(self, dir: &Path, resume: bool) -> Result<Option<VmEnd>, ApiError> {
        self.serve_from(Start::Restore { dir, resume })
    }

    /// Boots `boot` at once when given, then serves until `vmm.shutdown` (`Ok(None)`) or
    /// until the booted VM ends on its own (`Ok(Some(how))`, or the VM's error). Stops any
    /// VM left, disconnects the clients and removes the socket file before it returns.
    pub fn serve(self, boot: Option<VmConfig>) -> Result<Option<VmEnd>, ApiError> {
        self.serve_from(match boot {
            Some(config) => Start::Boot(config),
            None => Start::Empty,
        })
    }

    /// Starts `vmm`, already built (as a jailed VMM does, before it drops its
    /// privileges), then serves as [`ApiServer::serve`] does. The VM keeps the seccomp
    /// mode it was built with.
    pub fn serve_vmm(self, vmm: Vmm) -> Result<Option<VmEnd>, ApiError> {
        self.serve_from(Start::Built(Box::new(vmm)))
    }

    fn serve_from(self, start: Start<'_>) -> Result<Option<VmEnd>, ApiError> {
        let wake = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| ApiError::Server(ServerError::EventLoop(e)))?;
        let wake = Arc::new(wake);
        let mode = self.seccomp;
        let configure: Option<slot::Configure> = match (self.configure.clone(), mode) {
            (configure, SeccompMode::Off) => configure,
            (inner, mode) => Some(Arc::new(move |b: VmmBuilder| {
                match &inner {
                    Some(f) => f(b),
                    None => b,
                }
                .seccomp(mode)
            })),
        };
        let vms = slot::VmSlot::new(self.hypervisor.clone(), configure, wake.clone());
        let shared = Arc::new(server::Shared::new(vms, self.limits.clone(), wake));
        let result = (|| {
            match start {
                Start::Empty => {}
                Start::Boot(config) => shared
                    .slot
                    .create(config)
                    .and_then(|()| shared.slot.boot())
                    .map_err(ApiError::Boot)?,
                Start::Built(vmm) => shared.slot.adopt(*vmm).map_err(ApiError::Boot)?,
                Start::Restore { dir, resume } => shared
                    .slot
                    .restore(dir)
                    .and_then(|()| if resume { shared.slot.resume() } else { Ok(()) })
                    .map_err(ApiError::Boot)?,
            }
            seccomp::apply(ThreadKind::Api, mode, &self.hypervisor.ioctls())
                .map_err(ApiError::Seccomp)?;
            match server::run(&self.listener, &shared)? {
                server::Outcome::Shutdown => Ok(None),
                server::Outcome::VmEnded(Ok(end)) => Ok(Some(end)),
                server::Outcome::VmEnded(Err(e)) => Err(ApiError::VmFailed(e)),
            }
        })();
        if let Err(e) = shared.slot.delete() {
            log::error!("stopping the VM: {e}");
        }
        shared.disconnect_all();
        result
    }
}

/// What [`ApiServer`] does before it serves.
enum Start<'a> {
    Empty,
    Boot(VmConfig),
    Built(Box<Vmm>),
    Restore { dir: &'a Path, resume: bool },
}

/// Serves the control API on `socket` for VMs on `hypervisor` with the default limits (see
/// [`ApiServer`]): boots `boot` at once when given, returns on `vmm.shutdown` (`None`) or
/// when the booted VM ends on its own (how it ended), and removes the socket file.
pub fn serve(
    socket: &Path,
    hypervisor: Arc<dyn Hypervisor>,
    boot: Option<VmConfig>,
) -> Result<Option<VmEnd>, ApiError> {
    ApiServer::bind(socket, hypervisor)?.serve(boot)
}

/// The body of the `api_requests` fuzz target (see [`crate::testing::api_requests`]).
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn fuzz_requests(data: &[u8]) -> usize {
    use std::io::Write;
    let Ok((mut client, mut server)) = std::os::unix::net::UnixStream::pair() else {
        return 0;
    };
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = client.write_all(&input);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let _ = std::io::copy(&mut client, &mut std::io::sink());
    });
    let limits = Limits {
        request_timeout: std::time::Duration::from_secs(2),
        idle_timeout: std::time::Duration::from_secs(2),
        ..Limits::default()
    };
    let mut buf = Vec::new();
    let mut n = 0;
    while let Ok(req) = http::read_request(&mut server, &mut buf, &limits) {
        n += 1;
        if let Some(body) = &req.body {
            if req.path.ends_with("/vm.create") {
                let _ = serde_json::from_slice::<VmConfig>(body);
            } else {
                let _ = serde_json::from_slice::<serde_json::Value>(body);
            }
        }
    }
    // Read what is left, so the writer never writes into a closed socket.
    let _ = server.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = std::io::copy(&mut server, &mut std::io::sink());
    drop(server);
    let _ = writer.join();
    n
}
