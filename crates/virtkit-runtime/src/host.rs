//! The seam between the verbs and the host: signals, process liveness, cgroups, hooks,
//! and starting, talking to and reaping the runtime's children (a container's init, an
//! exec'd process: [`Host::spawn`], [`Channel`], [`Host::wait`]) go through [`Host`], so
//! every verb runs in unit tests on a recording double (`testing::RecordingHost`, feature
//! `test-utils`, whose children are scripted) and the real kernel is [`LinuxHost`]. What
//! happens inside the child (namespaces, the root filesystem) goes through
//! virtkit-namespaces' own `Syscalls` trait.

use std::convert::Infallible;
use std::fmt::Debug;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use oci_spec::runtime::Hook;
use virtkit_cgroups::{CgroupManager, Hierarchies};

use crate::error::{Context, Result};

/// What the runtime asks of the host outside a container's own set-up.
pub trait Host: Debug + Send + Sync {
    /// Sends signal `sig` to process `pid`.
    fn kill(&self, pid: i32, sig: i32) -> io::Result<()>;

    /// The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`) and the
    /// state letter of `pid`, or `None` if there is no such process.
    fn proc_stat(&self, pid: i32) -> Option<(u64, char)>;

    /// Reaps `pid` if it is an exited child of ours; never blocks.
    fn reap(&self, pid: i32);

    /// The manager of the cgroup at `path` (relative to the hierarchy roots).
    fn cgroup(&self, path: &str) -> Result<Box<dyn CgroupManager>>;

    /// Runs OCI hooks of one kind in order with the container state on stdin; the
    /// first failure stops and is returned.
    fn run_hooks(&self, kind: &str, hooks: &[Hook], state_json: &[u8]) -> Result<()>;

    /// Starts a child with `clone(flags)` used like fork (no `CLONE_VM`; the caller is
    /// single-threaded): in the child, `body` runs with the child's end of a new sync
    /// channel and never returns. Returns the child's pid and our end of the channel.
    fn spawn(
        &self,
        flags: i32,
        body: &mut dyn FnMut(RawFd) -> Infallible,
    ) -> Result<(i32, Box<dyn Channel>)>;

    /// Waits for our child `pid` to end and reaps it: its exit code, or 128 + the signal
    /// that killed it.
    fn wait(&self, pid: i32) -> Result<i32>;

    /// Whether `pid` is alive (not a zombie) and still the process that started at
    /// `start_time` (not a later process that got the same pid).
    fn alive(&self, pid: i32, start_time: u64) -> bool {
        pid > 0
            && self
                .proc_stat(pid)
                .is_some_and(|(st, state)| st == start_time && state != 'Z' && state != 'X')
    }
}

/// The parent's end of the sync channel with a child from [`Host::spawn`]: one message
/// per call (a `SOCK_SEQPACKET` socket on Linux). The child's protocol is in `init.rs`.
pub trait Channel: Debug + Send {
    /// Sends one message.
    fn send(&self, msg: &[u8]) -> io::Result<()>;

    /// Receives one message and the descriptor passed with it, if any; an empty message
    /// is end-of-file (the child exec'd, its end being close-on-exec, or died).
    fn recv_fd(&self) -> io::Result<(Vec<u8>, Option<OwnedFd>)>;

    /// Receives one message (a descriptor passed with it is closed).
    fn recv(&self) -> io::Result<Vec<u8>> {
        self.recv_fd().map(|(m, _)| m)
    }
}

/// A [`Channel`] over our end of a `SOCK_SEQPACKET` pair.
#[derive(Debug)]
struct Seqpacket(OwnedFd);

impl Channel for Seqpacket {
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        crate::util::send_msg(self.0.as_raw_fd(), msg)
    }

    fn recv_fd(&self) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
        crate::util::recv_msg_fd(self.0.as_raw_fd())
    }
}

/// The real host: `kill(2)`, `/proc`, `waitpid(2)`, cgroupfs as detected once per
/// process, hooks as child processes, children by `clone(2)` with a `SOCK_SEQPACKET`
/// pair.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxHost;

static HIERARCHIES: std::sync::OnceLock<Hierarchies> = std::sync::OnceLock::new();

impl Host for LinuxHost {
    fn kill(&self, pid: i32, sig: i32) -> io::Result<()> {
        crate::util::kill(pid, sig)
    }

    fn proc_stat(&self, pid: i32) -> Option<(u64, char)> {
        crate::util::proc_stat(pid)
    }

    fn reap(&self, pid: i32) {
        // SAFETY: a non-blocking waitpid with no status pointer; harmless if `pid` is
        // not our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }

    fn cgroup(&self, path: &str) -> Result<Box<dyn CgroupManager>> {
        let hier = match HIERARCHIES.get() {
            Some(h) => h,
            None => {
                let h = Hierarchies::detect().context("detect cgroup hierarchies")?;
                HIERARCHIES.get_or_init(|| h)
            }
        };
        Ok(virtkit_cgroups::open(hier, path)?)
    }

    fn run_hooks(&self, kind: &str, hooks: &[Hook], state_json: &[u8]) -> Result<()> {
        crate::hooks::run(kind, hooks, state_json)
    }

    fn spawn(
        &self,
        flags: i32,
        body: &mut dyn FnMut(RawFd) -> Infallible,
    ) -> Result<(i32, Box<dyn Channel>)> {
        let (parent, child) = crate::util::seqpacket_pair()?;
        let pid = crate::sys::clone_fork(flags)?;
        if pid == 0 {
            drop(parent);
            // Never returns (`Infallible`).
            body(child.as_raw_fd());
        }
        drop(child);
        Ok((pid, Box::new(Seqpacket(parent))))
    }

    fn wait(&self, pid: i32) -> Result<i32> {
        crate::sys::wait_child(pid)
    }
}
