//! The seam between the verbs and the host: signals, process liveness, cgroups and
//! hooks go through [`Host`], so the verbs that act on an existing container (state,
//! kill, delete, pause, resume, update, ps, events) run in unit tests on a recording
//! double (`testing::RecordingHost`, feature `test-utils`) and the real kernel is
//! [`LinuxHost`]. What happens inside the container's init (namespaces, the root
//! filesystem) goes through virtkit-namespaces' own `Syscalls` trait.

use std::fmt::Debug;
use std::io;

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

    /// Whether `pid` is alive (not a zombie) and still the process that started at
    /// `start_time` (not a later process that got the same pid).
    fn alive(&self, pid: i32, start_time: u64) -> bool {
        pid > 0
            && self
                .proc_stat(pid)
                .is_some_and(|(st, state)| st == start_time && state != 'Z' && state != 'X')
    }
}

/// The real host: `kill(2)`, `/proc`, `waitpid(2)`, cgroupfs as detected once per
/// process, hooks as child processes.
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
}
