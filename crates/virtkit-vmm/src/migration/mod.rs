//! Live migration: a running VM moved to another VMM over a Unix socket or TCP, with a
//! short pause (Cloud Hypervisor's `vm.send-migration` / `vm.receive-migration`).
//!
//! The source ([`crate::VmController::send_migration`]) runs the whole transfer on its
//! event loop's thread, so no device touches guest memory meanwhile; the vCPUs keep
//! running. It turns on the hypervisor's dirty-page logging, sends the configuration and
//! every non-zero page, then sends the pages the guest dirtied during the previous round,
//! round after round, until few are left ([`DIRTY_PAGES_TO_STOP`]) or after
//! [`MAX_ROUNDS`]. Then it pauses the vCPUs (the downtime starts), sends the last dirty
//! pages and the machine state (vCPUs, in-kernel devices, COM1, every virtio transport),
//! flushes the disks and waits for the destination's answer. On success the source VM
//! ends ([`crate::VmEnd::Migrated`]); on any failure it runs on as before.
//!
//! The destination ([`Incoming::accept`] then [`Incoming::finish`]) fills fresh guest RAM
//! from the stream, opens the disks only once the source has flushed them and stopped (the
//! disk files are shared: both VMMs must see the same paths, as with Cloud Hypervisor),
//! restores the state and runs the VM.
//!
//! Device I/O waits while the memory is copied (the event loop is busy sending); the
//! guest's vCPUs do not. A virtio-net tap is opened again by name at the destination; on
//! the same host the destination joins the tap while the source still holds it (taps are
//! multi-queue: `virtkit_net::tap_share`), and the source's queue goes when it ends.

mod receive;
mod send;
pub mod wire;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use receive::Incoming;
pub(crate) use send::send;

/// Pre-copy rounds before the VM is paused whatever is left.
pub const MAX_ROUNDS: u32 = 30;

/// The VM is paused for the last copy once a round leaves at most this many dirty pages.
pub const DIRTY_PAGES_TO_STOP: usize = 1024;

/// How long either side waits for the other to answer (or to send the next frame).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a destination waits for a source to connect.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of a migration, on either side.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The URL is not `unix:/PATH` or `tcp:HOST:PORT`.
    #[error("migration URL {0:?}: expected unix:/PATH or tcp:HOST:PORT")]
    Url(String),
    /// Connecting or listening failed.
    #[error("migration endpoint {url}: {error}")]
    Connect {
        /// The URL.
        url: String,
        /// The error.
        error: std::io::Error,
    },
    /// Reading or writing the stream failed (the peer went away).
    #[error("migration stream: {0}")]
    Stream(std::io::Error),
    /// The peer sent something that is not a valid migration.
    #[error("migration protocol: {0}")]
    Protocol(String),
    /// The peer reported a failure.
    #[error("the other VMM failed: {0}")]
    Peer(String),
    /// The VM could not be built or restored at the destination.
    #[error("restoring the migrated VM: {0}")]
    Restore(String),
    /// The hypervisor refused dirty logging, a pause or a state save at the source.
    #[error("migration source: {0}")]
    Source(String),
}

/// What a migration did (the source's view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// Pre-copy rounds, the first full copy included.
    pub rounds: u32,
    /// Bytes of guest memory sent, in all rounds.
    pub memory_bytes: u64,
    /// Pages sent in the last round, with the VM paused.
    pub last_round_pages: usize,
    /// From the pause to the destination's answer, in microseconds.
    pub downtime_us: u64,
    /// The whole migration, in milliseconds.
    pub total_ms: u64,
}

/// A byte stream to the other VMM.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

fn parse_url(url: &str) -> Result<Endpoint, MigrationError> {
    if let Some(p) = url.strip_prefix("unix:") {
        let p = p.trim_start_matches("//");
        if p.starts_with('/') {
            return Ok(Endpoint::Unix(p.into()));
        }
    } else if let Some(a) = url.strip_prefix("tcp:") {
        let a = a.trim_start_matches("//");
        if a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Ok(Endpoint::Tcp(a.to_string()));
        }
    }
    Err(MigrationError::Url(url.to_string()))
}

/// Connects to a destination listening at `url`.
pub fn connect(url: &str) -> Result<Box<dyn Stream>, MigrationError> {
    let err = |error| MigrationError::Connect {
        url: url.to_string(),
        error,
    };
    let s: Box<dyn Stream> = match parse_url(url)? {
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p).map_err(err)?;
            s.set_read_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            s.set_write_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            Box::new(s)
        }
        Endpoint::Tcp(a) => {
            let s = std::net::TcpStream::connect(a).map_err(err)?;
            s.set_nodelay(true).map_err(err)?;
            s.set_read_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            s.set_write_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            Box::new(s)
        }
    };
    Ok(s)
}

/// Accepts one connection within `timeout`, polling a non-blocking listener.
fn accept_within<T>(
    timeout: Duration,
    mut accept: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no source connected within {timeout:?}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Listens at `url` and accepts one source within [`ACCEPT_TIMEOUT`] (a Unix socket file
/// is removed once the source is connected, or the wait is over).
pub fn listen(url: &str) -> Result<Box<dyn Stream>, MigrationError> {
    listen_within(url, ACCEPT_TIMEOUT)
}

/// [`listen`], waiting at most `timeout` for the source.
pub fn listen_within(url: &str, timeout: Duration) -> Result<Box<dyn Stream>, MigrationError> {
    let err = |error| MigrationError::Connect {
        url: url.to_string(),
        error,
    };
    let s: Box<dyn Stream> = match parse_url(url)? {
        Endpoint::Unix(p) => {
            let l = UnixListener::bind(&p).map_err(err)?;
            let accepted = l
                .set_nonblocking(true)
                .and_then(|()| accept_within(timeout, || l.accept()));
            let _ = std::fs::remove_file(&p);
            let (s, _) = accepted.map_err(err)?;
            s.set_nonblocking(false).map_err(err)?;
            s.set_read_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            s.set_write_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            Box::new(s)
        }
        Endpoint::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            let (s, _) = accept_within(timeout, || l.accept()).map_err(err)?;
            s.set_nonblocking(false).map_err(err)?;
            s.set_read_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            s.set_write_timeout(Some(PEER_TIMEOUT)).map_err(err)?;
            Box::new(s)
        }
    };
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(matches!(
            parse_url("unix:/tmp/m.sock"),
            Ok(Endpoint::Unix(_))
        ));
        assert!(matches!(
            parse_url("unix:///tmp/m.sock"),
            Ok(Endpoint::Unix(_))
        ));
        assert!(matches!(
            parse_url("tcp:127.0.0.1:6000"),
            Ok(Endpoint::Tcp(_))
        ));
        for bad in [
            "",
            "unix:",
            "unix:rel",
            "tcp:host",
            "tcp::1",
            "tcp:h:99999",
            "file:///x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_destination_nobody_connects_to_gives_up() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("m.sock");
        let url = format!("unix:{}", sock.display());
        let e = listen_within(&url, Duration::from_millis(100))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no source connected"), "{e}");
        assert!(!sock.exists(), "the socket file is removed");
        let e = listen_within("tcp:127.0.0.1:0", Duration::from_millis(50))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no source connected"), "{e}");
    }
}
