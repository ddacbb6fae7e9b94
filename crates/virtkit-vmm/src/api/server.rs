//! The server loop: accepts connections on the listening socket and serves each on a thread
//! of its own (at most `max_connections` at once), and ends when `vmm.shutdown` is answered
//! or when the booted VM ends on its own.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use virtkit_vcpu::EventFd;

use super::http::{self, Limits, Response};
use super::routes::{self, After};
use super::slot::{SlotError, VmSlot};
use crate::vmm::VmEnd;

/// Errors of the server loop itself.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// epoll or the wake-up eventfd failed.
    #[error("API server event loop: {0}")]
    EventLoop(std::io::Error),
}

/// How the server loop ended.
pub(crate) enum Outcome {
    /// `vmm.shutdown`.
    Shutdown,
    /// The booted VM ended on its own.
    VmEnded(Result<VmEnd, SlotError>),
}

/// What the connection threads share with the loop.
pub(crate) struct Shared {
    pub(crate) slot: VmSlot,
    pub(crate) limits: Limits,
    pub(crate) wake: Arc<EventFd>,
    exit: AtomicBool,
    next_id: AtomicU64,
    /// The open connections, to disconnect them when the server ends.
    conns: Mutex<HashMap<u64, UnixStream>>,
}

impl Shared {
    pub(crate) fn new(slot: VmSlot, limits: Limits, wake: Arc<EventFd>) -> Self {
        Shared {
            slot,
            limits,
            wake,
            exit: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, UnixStream>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_exit(&self) {
        self.exit.store(true, Ordering::SeqCst);
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the API server: {e}");
        }
    }

    /// Disconnects every client (their threads then end).
    pub(crate) fn disconnect_all(&self) {
        for s in self.conns().values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Serves one connection until the client leaves, breaks a limit or the server ends.
fn serve_connection(mut stream: UnixStream, shared: &Shared) {
    let blocking = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(shared.limits.write_timeout)));
    if let Err(e) = blocking {
        log::warn!("API connection: {e}");
        return;
    }
    let mut buf = Vec::new();
    loop {
        let req = match http::read_request(&mut stream, &mut buf, &shared.limits) {
            Ok(req) => req,
            Err(e) => {
                if let Some(status) = e.status() {
                    log::info!("API request refused ({status}): {e}");
                    let resp =
                        Response::error(status, &[http::title(status).into(), e.to_string()]);
                    let _ = http::write_response(&mut stream, &resp, false);
                }
                break;
            }
        };
        let (resp, after) = routes::handle(&shared.slot, &req);
        let keep_alive = req.keep_alive && after == After::Serve;
        let written = http::write_response(&mut stream, &resp, keep_alive);
        if after == After::Exit {
            shared.request_exit();
        }
        if written.is_err() || !keep_alive {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Refuses a connection over the limit.
fn refuse(mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let resp = Response::error(503, &["Too many open connections".into()]);
    let _ = http::write_response(&mut stream, &resp, false);
}

fn accept_one(stream: UnixStream, shared: &Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = shared.conns();
        if conns.len() >= shared.limits.max_connections {
            drop(conns);
            refuse(stream);
            return;
        }
        let clone = match stream.try_clone() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("API connection: {e}");
                return;
            }
        };
        conns.insert(id, clone);
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || {
            // It runs under the API thread's filter, inherited.
            crate::seccomp::label_inherited(crate::seccomp::ThreadKind::Api);
            serve_connection(stream, &s);
            s.conns().remove(&id);
        });
    if let Err(e) = spawned {
        log::warn!("cannot start an API connection thread: {e}");
        shared.conns().remove(&id);
    }
}

const LISTENER: u64 = 0;
const WAKE: u64 = 1;

/// Accepts and serves until `vmm.shutdown` or the VM's own end.
pub(crate) fn run(listener: &UnixListener, shared: &Arc<Shared>) -> Result<Outcome, ServerError> {
    let epoll = Epoll::new().map_err(ServerError::EventLoop)?;
    for (fd, token) in [
        (listener.as_raw_fd(), LISTENER),
        (shared.wake.as_raw_fd(), WAKE),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(ServerError::EventLoop)?;
    }
    let mut events = [EpollEvent::default(); 2];
    loop {
        if shared.exit.load(Ordering::SeqCst) {
            return Ok(Outcome::Shutdown);
        }
        if let Some(ended) = shared.slot.take_ended() {
            return Ok(Outcome::VmEnded(ended));
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(ServerError::EventLoop(e)),
        };
        for ev in &events[..n] {
            if ev.data() == WAKE {
                let _ = shared.wake.read();
                continue;
            }
            loop {
                match listener.accept() {
                    Ok((stream, _)) => accept_one(stream, shared),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of descriptors, say: do not spin on the ready listener.
                        log::warn!("API accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
    }
}
