//! A recording [`Host`] for tests (feature `test-utils`): every call is recorded in
//! order, processes are a table the test fills (a `SIGKILL` or `SIGTERM` ends them),
//! and cgroups are in-memory records that remember their freezer state, resources and
//! whether they were removed. A failure can be injected per operation. Children the
//! runtime spawns (a container's init, an exec'd process) are scripted ([`Step`]): they
//! answer the handshake as the test says, fail at a step, or die; a killed child stays a
//! zombie until the runtime waits for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use oci_spec::runtime::Hook;
use virtkit_cgroups::{CgroupManager, CgroupVersion, FreezerState, Resources, Stats};

use crate::error::{Error, Result};
use crate::host::{Channel, Host};

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
    /// A child started (`clone` with `flags`), given `pid`.
    Spawn {
        /// The pid the fake gave it.
        pid: i32,
        /// The clone flags.
        flags: i32,
    },
    /// A message the runtime sent to child `pid`.
    Sent {
        /// The child.
        pid: i32,
        /// The message (lossy UTF-8).
        msg: String,
    },
    /// A message the runtime received from child `pid` (empty: end-of-file).
    Received {
        /// The child.
        pid: i32,
        /// The message (lossy UTF-8).
        msg: String,
    },
    /// The runtime waited for (reaped) child `pid`.
    Wait(i32),
    /// What the file at `path` held when a child reached a [`Step::Snapshot`].
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Its content, `None` if it did not exist.
        content: Option<String>,
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

/// One step of a scripted child, in order (see [`RecordingHost::script_child`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Waits for a message from the runtime that starts with these bytes (a different
    /// one fails the runtime's send, naming both).
    Expect(Vec<u8>),
    /// Sends this message to the runtime.
    Send(Vec<u8>),
    /// Records what the file at this path holds now ([`Call::Snapshot`]).
    Snapshot(PathBuf),
    /// Execs: the runtime reads end-of-file and the process lives on (a created init
    /// blocks on the exec fifo; an exec'd process runs) until killed, or until waited
    /// for, when it exits with this code.
    Exec(i32),
    /// Dies (as init does after sending `E<error>`: status 127): the runtime reads
    /// end-of-file, its sends fail with `EPIPE`; a zombie until waited for.
    Die,
}

impl Step {
    /// [`Step::Expect`] of a text message.
    pub fn expect(m: &str) -> Step {
        Step::Expect(m.as_bytes().to_vec())
    }

    /// [`Step::Send`] of a text message.
    pub fn send(m: &str) -> Step {
        Step::Send(m.as_bytes().to_vec())
    }
}

/// A spawned child of the fake.
#[derive(Debug)]
struct Child {
    script: VecDeque<Step>,
    /// The code `wait` returns.
    code: i32,
}

/// The first pid the fake gives a child.
pub const FIRST_CHILD_PID: i32 = 50_000;

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
    /// Scripts for the next children, in order.
    scripts: VecDeque<Vec<Step>>,
    children: HashMap<i32, Child>,
    next_pid: i32,
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

    /// The state letter of process `pid`: `S` alive, `Z` a child that ended and was not
    /// waited for, `X` gone (and reaped).
    pub fn process_state(&self, pid: i32) -> Option<char> {
        self.lock().procs.get(&pid).map(|p| p.1)
    }

    /// The script of the next child the runtime spawns (queued: one per spawn, in
    /// order). A child without one answers "go" with "ready" and execs.
    pub fn script_child(&self, steps: Vec<Step>) {
        self.lock().scripts.push_back(steps);
    }

    /// Ends `pid`: a child of ours becomes a zombie with exit code `code`, any other
    /// process is gone; an unkillable one lives on.
    fn end_with(i: &mut Inner, pid: i32, code: i32) {
        let Some(p) = i.procs.get_mut(&pid) else {
            return;
        };
        if p.1 == 'U' || p.1 == 'X' {
            return;
        }
        match i.children.get_mut(&pid) {
            Some(c) => {
                p.1 = 'Z';
                c.code = code;
            }
            None => p.1 = 'X',
        }
    }

    fn end(i: &mut Inner, pid: i32) {
        Self::end_with(i, pid, 128 + libc::SIGKILL);
    }

    /// Runs child `pid`'s leading snapshot steps; returns its next step.
    fn next_step(i: &mut Inner, pid: i32) -> Option<Step> {
        loop {
            let step = i.children.get_mut(&pid)?.script.pop_front()?;
            let Step::Snapshot(path) = step else {
                return Some(step);
            };
            let content = std::fs::read_to_string(&path).ok();
            i.calls.push(Call::Snapshot { path, content });
        }
    }
}

/// The runtime's end of a scripted child's channel.
#[derive(Debug)]
struct FakeChannel {
    host: RecordingHost,
    pid: i32,
}

impl FakeChannel {
    fn unscripted(&self, what: &str) -> io::Error {
        io::Error::other(format!("fake child {}: {what}", self.pid))
    }
}

impl Channel for FakeChannel {
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let mut i = self.host.lock();
        let pid = self.pid;
        i.calls.push(Call::Sent {
            pid,
            msg: String::from_utf8_lossy(msg).into_owned(),
        });
        if i.procs.get(&pid).is_none_or(|p| p.1 != 'S') {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        match RecordingHost::next_step(&mut i, pid) {
            Some(Step::Expect(want)) if msg.starts_with(&want) => Ok(()),
            Some(Step::Expect(want)) => Err(self.unscripted(&format!(
                "expected {:?}, got {:?}",
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(msg)
            ))),
            Some(Step::Die) => {
                RecordingHost::end_with(&mut i, pid, 127);
                Err(io::Error::from_raw_os_error(libc::EPIPE))
            }
            // Not waiting for it: queued and never read (as by a real child).
            Some(step) => {
                if let Some(c) = i.children.get_mut(&pid) {
                    c.script.push_front(step);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn recv_fd(&self) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
        let mut i = self.host.lock();
        let pid = self.pid;
        let msg = match RecordingHost::next_step(&mut i, pid) {
            Some(Step::Send(m)) => m,
            Some(Step::Exec(code)) => {
                if let Some(c) = i.children.get_mut(&pid) {
                    c.code = code;
                }
                Vec::new()
            }
            Some(Step::Die) => {
                RecordingHost::end_with(&mut i, pid, 127);
                Vec::new()
            }
            Some(step @ Step::Expect(_)) => {
                return Err(self.unscripted(&format!(
                    "waits for the runtime ({step:?}), which waits for it"
                )))
            }
            // Dead, or exec'd: end-of-file.
            Some(Step::Snapshot(_)) | None => Vec::new(),
        };
        i.calls.push(Call::Received {
            pid,
            msg: String::from_utf8_lossy(&msg).into_owned(),
        });
        Ok((msg, None))
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

    fn spawn(
        &self,
        flags: i32,
        _body: &mut dyn FnMut(RawFd) -> Infallible,
    ) -> Result<(i32, Box<dyn Channel>)> {
        let mut i = self.lock();
        let pid = FIRST_CHILD_PID + i.next_pid;
        i.next_pid += 1;
        let script = i
            .scripts
            .pop_front()
            .unwrap_or_else(|| vec![Step::expect("go"), Step::send("ready"), Step::Exec(0)]);
        i.calls.push(Call::Spawn { pid, flags });
        i.procs.insert(pid, (1000 + pid as u64, 'S'));
        i.children.insert(
            pid,
            Child {
                script: script.into(),
                code: 0,
            },
        );
        let chan = FakeChannel {
            host: self.clone(),
            pid,
        };
        Ok((pid, Box::new(chan)))
    }

    fn wait(&self, pid: i32) -> Result<i32> {
        let mut i = self.lock();
        i.calls.push(Call::Wait(pid));
        let code = match i.children.get(&pid) {
            Some(c) => c.code,
            None => return Err(Error::invalid(format!("waitpid {pid}: not a child"))),
        };
        if let Some(p) = i.procs.get_mut(&pid) {
            p.1 = 'X';
        }
        Ok(code)
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
