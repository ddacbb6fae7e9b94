//! A recording [`Host`] for tests (feature `test-utils`): every call is recorded in
//! order, processes are a table the test fills (a `SIGKILL` or `SIGTERM` ends them),
//! and cgroups are in-memory records that remember their freezer state, resources and
//! whether they were removed. A failure can be injected per operation.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use oci_spec::runtime::Hook;
use virtkit_cgroups::{CgroupManager, CgroupVersion, FreezerState, Resources, Stats};

use crate::error::{Error, Result};
use crate::host::Host;

/// One call the runtime made through its [`Host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `kill(pid, sig)`.
    Kill {
        /// The target.
        pid: i32,
        /// The signal.
        sig: i32,
    },
    /// A non-blocking reap of `pid`.
    Reap(i32),
    /// Hooks of one kind run, with how many there were.
    Hooks {
        /// `prestart`, `poststart`, `poststop`...
        kind: String,
        /// How many hooks.
        count: usize,
    },
    /// An operation on the cgroup at `path`.
    Cgroup {
        /// The cgroup path.
        path: String,
        /// What was done.
        op: CgroupOp,
    },
}

/// An operation on a fake cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupOp {
    /// `create`.
    Create,
    /// `add_process(pid)`.
    AddProcess(i32),
    /// `apply` of resources.
    Apply,
    /// `freeze`.
    Freeze,
    /// `thaw`.
    Thaw,
    /// `signal_all(sig)`.
    SignalAll(i32),
    /// `kill_all`.
    KillAll,
    /// `delete`.
    Delete,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    /// pid → (start time, state letter).
    procs: HashMap<i32, (u64, char)>,
    frozen: HashSet<String>,
    deleted: HashSet<String>,
    /// cgroup path → pids in it.
    members: HashMap<String, Vec<i32>>,
    fail_cgroup: HashMap<(String, &'static str), i32>,
    fail_hooks: HashSet<String>,
}

/// The recording host. Clones share one record.
#[derive(Debug, Clone, Default)]
pub struct RecordingHost {
    inner: Arc<Mutex<Inner>>,
}

impl RecordingHost {
    /// An empty host: no processes, no cgroups.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a live process `pid` that started at `start_time`, member of cgroup `cgroup`.
    pub fn add_process(&self, pid: i32, start_time: u64, cgroup: &str) {
        let mut i = self.lock();
        i.procs.insert(pid, (start_time, 'S'));
        i.members.entry(cgroup.to_string()).or_default().push(pid);
    }

    /// Makes process `pid` ignore signals (it never dies), to test timeouts.
    pub fn make_unkillable(&self, pid: i32) {
        if let Some(p) = self.lock().procs.get_mut(&pid) {
            p.1 = 'U';
        }
    }

    /// Makes the cgroup operation `op` (`"delete"`, `"freeze"`, `"thaw"`,
    /// `"kill_all"`, `"apply"`, `"signal_all"`) on `path` fail with `errno`.
    pub fn fail_cgroup(&self, path: &str, op: &'static str, errno: i32) {
        self.lock()
            .fail_cgroup
            .insert((path.to_string(), op), errno);
    }

    /// Makes hooks of `kind` fail.
    pub fn fail_hooks(&self, kind: &str) {
        self.lock().fail_hooks.insert(kind.to_string());
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Whether cgroup `path` was removed.
    pub fn cgroup_deleted(&self, path: &str) -> bool {
        self.lock().deleted.contains(path)
    }

    /// Whether cgroup `path` is frozen.
    pub fn cgroup_frozen(&self, path: &str) -> bool {
        self.lock().frozen.contains(path)
    }

    /// Whether process `pid` is alive.
    pub fn process_alive(&self, pid: i32) -> bool {
        self.lock().procs.get(&pid).is_some_and(|p| p.1 != 'X')
    }

    fn end(i: &mut Inner, pid: i32) {
        if let Some(p) = i.procs.get_mut(&pid) {
            if p.1 != 'U' {
                p.1 = 'X';
            }
        }
    }
}

impl Host for RecordingHost {
    fn kill(&self, pid: i32, sig: i32) -> io::Result<()> {
        let mut i = self.lock();
        i.calls.push(Call::Kill { pid, sig });
        match i.procs.get(&pid) {
            Some((_, s)) if *s != 'X' => {
                if sig == libc::SIGKILL || sig == libc::SIGTERM {
                    Self::end(&mut i, pid);
                }
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn proc_stat(&self, pid: i32) -> Option<(u64, char)> {
        self.lock()
            .procs
            .get(&pid)
            .map(|&(st, s)| (st, if s == 'U' { 'S' } else { s }))
    }

    fn reap(&self, pid: i32) {
        self.lock().calls.push(Call::Reap(pid));
    }

    fn cgroup(&self, path: &str) -> Result<Box<dyn CgroupManager>> {
        Ok(Box::new(FakeCgroup {
            host: self.clone(),
            path: path.to_string(),
        }))
    }

    fn run_hooks(&self, kind: &str, hooks: &[Hook], _state_json: &[u8]) -> Result<()> {
        let mut i = self.lock();
        i.calls.push(Call::Hooks {
            kind: kind.to_string(),
            count: hooks.len(),
        });
        if i.fail_hooks.contains(kind) {
            return Err(Error::invalid(format!("{kind} hook failed")));
        }
        Ok(())
    }
}

/// A cgroup of the [`RecordingHost`].
#[derive(Debug)]
struct FakeCgroup {
    host: RecordingHost,
    path: String,
}

impl FakeCgroup {
    fn op(&self, op: CgroupOp, name: &'static str) -> virtkit_cgroups::Result<()> {
        let mut i = self.host.lock();
        i.calls.push(Call::Cgroup {
            path: self.path.clone(),
            op,
        });
        match i.fail_cgroup.get(&(self.path.clone(), name)) {
            Some(&errno) => Err(virtkit_cgroups::Error::Write {
                path: PathBuf::from(&self.path),
                value: name.to_string(),
                source: io::Error::from_raw_os_error(errno),
            }),
            None => Ok(()),
        }
    }
}

impl CgroupManager for FakeCgroup {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![PathBuf::from("/sys/fs/cgroup").join(&self.path)]
    }

    fn create(&self) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::Create, "create")
    }

    fn exists(&self) -> bool {
        !self.host.cgroup_deleted(&self.path)
    }

    fn add_process(&self, pid: i32) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::AddProcess(pid), "add_process")
    }

    fn join_self(&self) -> virtkit_cgroups::Result<()> {
        Ok(())
    }

    fn pids(&self) -> virtkit_cgroups::Result<Vec<i32>> {
        let i = self.host.lock();
        let members = i.members.get(&self.path).cloned().unwrap_or_default();
        Ok(members
            .into_iter()
            .filter(|p| i.procs.get(p).is_some_and(|s| s.1 != 'X'))
            .collect())
    }

    fn apply(&self, _resources: &Resources) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::Apply, "apply")
    }

    fn stats(&self) -> virtkit_cgroups::Result<Stats> {
        Ok(Stats::default())
    }

    fn freeze(&self) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::Freeze, "freeze")?;
        self.host.lock().frozen.insert(self.path.clone());
        Ok(())
    }

    fn thaw(&self) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::Thaw, "thaw")?;
        self.host.lock().frozen.remove(&self.path);
        Ok(())
    }

    fn freezer_state(&self) -> virtkit_cgroups::Result<FreezerState> {
        Ok(if self.host.cgroup_frozen(&self.path) {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        })
    }

    fn signal_all(&self, signal: i32) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::SignalAll(signal), "signal_all")
    }

    fn kill_all(&self) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::KillAll, "kill_all")?;
        let pids = self.pids()?;
        let mut i = self.host.lock();
        for p in pids {
            RecordingHost::end(&mut i, p);
        }
        Ok(())
    }

    fn delete(&self) -> virtkit_cgroups::Result<()> {
        self.op(CgroupOp::Delete, "delete")?;
        self.host.lock().deleted.insert(self.path.clone());
        Ok(())
    }
}
