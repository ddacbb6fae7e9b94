//! cgroups for virtkit containers: cgroup v1, v2 and the hybrid layout,
//! detected and driven through one small trait, [`CgroupManager`].
//!
//! - [`Hierarchies`] finds the mounted hierarchies (`/proc/self/mountinfo`) and
//!   tells which version controls resources ([`Hierarchies::version`]): v2 only
//!   on a unified layout; a hybrid layout (v1 controllers plus a cgroup2 mount
//!   such as systemd's `/sys/fs/cgroup/unified`) is driven as v1.
//! - [`open`] gives a manager for a cgroup named by a relative path such as
//!   `virtkit/<id>`: [`V1Manager`] (one directory per v1 hierarchy) or
//!   [`V2Manager`] (one directory in the unified hierarchy).
//! - [`Resources`] is the OCI `linux.resources` set in v1 terms (with the
//!   `oci` feature, `Resources::from_oci` fills it from an OCI spec); the v2
//!   conversions live in [`convert`] and follow runc's formulas.
//! - Device access rules ([`Resources::devices`]) become v1
//!   `devices.allow`/`devices.deny` lines or, on v2, an eBPF
//!   `BPF_PROG_TYPE_CGROUP_DEVICE` program ([`devices`]).
//! - Stats, freeze/thaw, kill-everything (v2 `cgroup.kill` or repeated
//!   SIGKILL with the freezer against forks) and delete (children first,
//!   EBUSY retried) complete the [`CgroupManager`] trait.
//! - With the `test-utils` feature, `fake::FakeCgroupFs` lays out a v1 or
//!   v2 tree in a tempdir for unit tests, and `testing` has the fuzz entry
//!   points (every parser of kernel text; an OCI spec's cgroup data).
//! - Every error names the file and, for writes, the value ([`Error`]).
//!
//! ```no_run
//! use virtkit_cgroups::{open, CgroupManager, Hierarchies, Resources};
//!
//! # fn main() -> Result<(), virtkit_cgroups::Error> {
//! let hier = Hierarchies::detect()?;
//! let cg = open(&hier, "virtkit/demo")?;
//! cg.create()?;
//! let mut res = Resources::default();
//! res.memory.limit = Some(64 << 20);
//! res.cpu.quota = Some(20_000);
//! res.cpu.period = Some(100_000);
//! res.pids.limit = Some(32);
//! cg.apply(&res)?;
//! cg.add_process(std::process::id() as i32)?;
//! println!("{:?}", cg.stats()?);
//! # Ok(()) }
//! ```
//!
//! The same code against a fake tree (what unit tests do):
//!
//! ```
//! use std::path::Path;
//! use virtkit_cgroups::{CgroupManager, Hierarchies, Resources, V2Manager};
//!
//! let root = tempfile::tempdir().unwrap();
//! for f in ["cgroup.controllers", "cgroup.subtree_control"] {
//!     std::fs::write(root.path().join(f), "cpu memory pids\n").unwrap();
//! }
//! let cg = V2Manager::new(root.path(), "doc").unwrap();
//! cg.create().unwrap();
//! // A real cgroupfs creates the control files; the fake tree needs them made.
//! let dir = root.path().join("doc");
//! for f in ["memory.max", "memory.swap.max", "cpu.max", "pids.max"] {
//!     std::fs::write(dir.join(f), "max\n").unwrap();
//! }
//! let mut res = Resources::default();
//! res.memory.limit = Some(100 << 20);
//! res.memory.swap = Some(300 << 20); // OCI: memory + swap
//! res.cpu.quota = Some(50_000);
//! res.cpu.period = Some(100_000);
//! cg.apply(&res).unwrap();
//! let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
//! assert_eq!(read("memory.max"), "104857600");
//! assert_eq!(read("memory.swap.max"), "209715200"); // swap alone
//! assert_eq!(read("cpu.max"), "50000 100000");
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bpf;
pub mod convert;
mod detect;
pub mod devices;
mod error;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
#[cfg(test)]
mod fake_tests;
mod fs;
#[cfg(feature = "oci")]
mod oci;
mod resources;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
mod v1;
mod v2;

use std::fmt;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use detect::{CgroupVersion, Hierarchies, Layout, ProcCgroup, V1_CONTROLLERS, V2_CONTROLLERS};
pub use devices::{DeviceAccess, DeviceRule, DeviceType};
pub use error::{Error, Result};
pub use resources::{
    BlockIoResources, CpuResources, CpuStats, DeviceNumber, FreezerState, IoDeviceStats,
    MemoryResources, MemoryStats, PidsResources, PidsStats, Resources, Stats, ThrottleDevice,
    WeightDevice,
};
pub use v1::V1Manager;
pub use v2::V2Manager;

/// How long freeze, thaw and kill wait by default before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One cgroup (in every hierarchy it needs), whatever the cgroup version.
///
/// A manager only names the cgroup: [`create`](Self::create) makes it and
/// [`delete`](Self::delete) removes it. Methods take `&self`; the cgroup
/// filesystem is the state.
pub trait CgroupManager: fmt::Debug + Send + Sync {
    /// The cgroup version this manager drives.
    fn version(&self) -> CgroupVersion;

    /// The cgroup's path relative to the hierarchy root(s), e.g. `virtkit/ab12`.
    fn path(&self) -> &str;

    /// The cgroup's directories: one per v1 hierarchy, or the single v2 one.
    fn dirs(&self) -> Vec<PathBuf>;

    /// Creates the cgroup (and missing parents) in every hierarchy it needs.
    /// On v2 it first enables the controllers in each parent's
    /// `cgroup.subtree_control`; on v1 it seeds an empty `cpuset.cpus` and
    /// `cpuset.mems` from the parent. Creating an existing cgroup is fine.
    fn create(&self) -> Result<()>;

    /// Whether the cgroup directory exists (in every hierarchy, on v1).
    fn exists(&self) -> bool;

    /// Moves process `pid` (all its threads) into the cgroup.
    fn add_process(&self, pid: i32) -> Result<()>;

    /// Moves the calling process into the cgroup, for a freshly forked child before it
    /// execs. Call it only while the process has a single thread: on v1 it writes "0"
    /// to each hierarchy's `tasks`, which moves the calling thread alone; on v2 it
    /// writes "0" to `cgroup.procs`.
    ///
    /// On v1 this is much cheaper than [`add_process`](Self::add_process) from the
    /// parent: moving a whole process (writing a pid to `cgroup.procs`) takes the
    /// kernel's global `cgroup_threadgroup_rwsem` for writing, and the first writer
    /// after a quiet period waits a full RCU grace period (~10 ms on a v1 host);
    /// a task moving only itself skips that lock.
    fn join_self(&self) -> Result<()>;

    /// The pids in the cgroup and its descendants (sorted, deduplicated).
    fn pids(&self) -> Result<Vec<i32>>;

    /// Applies `resources`: unset fields are left alone. Values are
    /// validated before anything is written where possible.
    fn apply(&self, resources: &Resources) -> Result<()>;

    /// Reads memory, pids and cpu statistics.
    fn stats(&self) -> Result<Stats>;

    /// Freezes every task and waits until the kernel reports the cgroup frozen.
    fn freeze(&self) -> Result<()>;

    /// Thaws the cgroup and waits until the kernel reports it thawed.
    fn thaw(&self) -> Result<()>;

    /// The current freezer state.
    fn freezer_state(&self) -> Result<FreezerState>;

    /// Sends `signal` to every process in the cgroup and its descendants,
    /// once (for `kill --all SIG`). With the freezer available the cgroup is
    /// frozen while the list is read and signalled, so no fork escapes, and
    /// restored afterwards.
    fn signal_all(&self, signal: i32) -> Result<()>;

    /// Kills every process in the cgroup and its descendants and waits until
    /// it is empty: v2 `cgroup.kill` when present, otherwise SIGKILL to every
    /// pid in `cgroup.procs`, repeated until none is left (bounded by the
    /// manager's timeout).
    fn kill_all(&self) -> Result<()>;

    /// Removes the cgroup: child cgroups first, retrying EBUSY with a bounded
    /// backoff. A cgroup that does not exist is not an error. The cgroup must
    /// be empty of processes (see [`kill_all`](Self::kill_all)).
    fn delete(&self) -> Result<()>;
}

/// A manager for the cgroup at `path` (relative to the hierarchy roots) of
/// the version `hier` uses for resource control.
pub fn open(hier: &Hierarchies, path: &str) -> Result<Box<dyn CgroupManager>> {
    Ok(match hier.version() {
        CgroupVersion::V1 => Box::new(V1Manager::new(hier, path)?),
        CgroupVersion::V2 => {
            let root = hier.unified_mount().ok_or_else(|| {
                Error::NoHierarchy("unified layout without a cgroup2 mount".into())
            })?;
            Box::new(V2Manager::new(root, path)?)
        }
    })
}

/// Checks a relative cgroup path and returns it without leading or
/// trailing slashes. A leading '/' is accepted (OCI `cgroupsPath` style) and
/// means the hierarchy root, not the filesystem root.
pub(crate) fn normalize_path(path: &str) -> Result<String> {
    let bad = |reason| Error::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Err(bad("empty: the hierarchy root cannot be managed"));
    }
    for comp in trimmed.split('/') {
        match comp {
            "" => return Err(bad("empty component")),
            "." | ".." => return Err(bad("'.' and '..' are not allowed")),
            c if c.contains('\0') => return Err(bad("NUL byte")),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// Repeats `step` until it returns `Ok(true)` or `timeout` passes, sleeping
/// 100 µs at first and doubling up to 20 ms between tries.
pub(crate) fn poll_until(
    what: &'static str,
    dir: &std::path::Path,
    timeout: Duration,
    mut step: impl FnMut(u32) -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(100);
    let mut i = 0;
    loop {
        if step(i)? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what,
                path: dir.to_path_buf(),
                waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(normalize_path("virtkit/a").unwrap(), "virtkit/a");
        assert_eq!(normalize_path("/virtkit/a/").unwrap(), "virtkit/a");
        for bad in ["", "/", "a//b", "a/../b", "..", "./a"] {
            let e = normalize_path(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidPath { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn error_messages_name_file_and_value() {
        let e = Error::Write {
            path: "/sys/fs/cgroup/memory/x/memory.limit_in_bytes".into(),
            value: "100".into(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(
            e.to_string(),
            "writing \"100\" to /sys/fs/cgroup/memory/x/memory.limit_in_bytes: \
             Device or resource busy (os error 16)"
        );
    }
}
