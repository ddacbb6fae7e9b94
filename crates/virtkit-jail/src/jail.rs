//! [`Jail`]: the host side. It makes the cgroup and the root's mount points, starts the
//! jailed process in its namespaces, waits for it and removes everything it made; a
//! cleaner process does the same if the supervisor itself is killed.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use virtkit_cgroups::{CgroupManager, Hierarchies, Resources};
use virtkit_namespaces::LinuxSyscalls;

use crate::inside::{drop_privileges, enter_root, host_path};
use crate::{JailConfig, JailError};

/// What the jailed closure gets: the config, and the one call that drops privileges.
#[derive(Debug)]
pub struct Inside {
    config: JailConfig,
}

impl Inside {
    /// The jail's config.
    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    /// Becomes the jail's uid and gid with no capabilities and `no_new_privs` (call it
    /// once the devices and files are open, before any thread starts).
    pub fn drop_privileges(&self) -> Result<(), JailError> {
        drop_privileges(self.config.uid, self.config.gid)
    }
}

/// A validated jail, ready to [`Jail::run`] a closure inside.
#[derive(Debug)]
pub struct Jail {
    config: JailConfig,
}

/// What the supervisor made on the host.
#[derive(Debug, Default)]
struct Made {
    /// The jail's root.
    root: PathBuf,
    /// Whether the jail created the root (else it was an empty directory).
    created_root: bool,
    /// Directories and placeholder files under the root, in creation order.
    paths: Vec<PathBuf>,
}

impl Jail {
    /// Checks `config` ([`JailConfig::validate`]).
    pub fn new(config: JailConfig) -> Result<Jail, JailError> {
        config.validate()?;
        Ok(Jail { config })
    }

    /// Runs `f` in the jail: a child in new mount, PID, IPC and UTS namespaces (and a new
    /// network namespace when asked), in the jail's cgroup, pivoted into its root; `f`'s
    /// result is the child's exit status, returned here once it ended (128 + the signal
    /// when killed). Nothing is left afterwards: the mounts died with the namespace, the
    /// cgroup and the root's mount points are removed. Call it before any thread starts.
    pub fn run(self, f: impl FnOnce(&Inside) -> i32) -> Result<i32, JailError> {
        let hier = Hierarchies::detect()?;
        let cgroup = virtkit_cgroups::open(&hier, &self.config.cgroup_path())?;
        let made = match self.prepare(&*cgroup) {
            Ok(m) => m,
            Err(e) => {
                // Nothing of a failed start is left either.
                remove_cgroup(&*cgroup);
                return Err(e);
            }
        };
        // The cleaner holds the read end of `alive`; it sees EOF when the supervisor ends,
        // however it ends, and then removes what is left, unless told "done" first.
        let (alive_r, alive_w) = match pipe() {
            Ok(p) => p,
            Err(e) => {
                cleanup(&*cgroup, &made);
                return Err(e);
            }
        };
        let result = self.supervise(&*cgroup, &made, alive_r, alive_w.as_raw_fd(), f);
        cleanup(&*cgroup, &made);
        let _ = std::fs::File::from(alive_w).write_all(DONE);
        result
    }

    fn prepare(&self, cgroup: &dyn CgroupManager) -> Result<Made, JailError> {
        if cgroup.exists() {
            if !cgroup.pids()?.is_empty() {
                return Err(JailError::Config(format!(
                    "a jail named {} is running (its cgroup {} has processes)",
                    self.config.id,
                    cgroup.path()
                )));
            }
            log::info!("removing the stale cgroup {} of a dead jail", cgroup.path());
            cgroup.delete()?;
        }
        cgroup.create()?;
        cgroup.apply(&self.resources())?;
        let root = &self.config.root;
        let mut made = Made {
            root: root.clone(),
            ..Made::default()
        };
        if !root.exists() {
            if let Err(e) = std::fs::create_dir(root) {
                remove_cgroup(cgroup);
                return Err(JailError::io("cannot create", root)(e));
            }
            made.created_root = true;
        }
        let result = (|| {
            let proc_dir = root.join("proc");
            mkdirs(root, &proc_dir, &mut made)?;
            for f in &self.config.files {
                let target = host_path(root, &f.path);
                if let Some(parent) = target.parent() {
                    mkdirs(root, parent, &mut made)?;
                }
                std::fs::File::create(&target).map_err(JailError::io("cannot create", &target))?;
                made.paths.push(target);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(made),
            Err(e) => {
                cleanup(cgroup, &made);
                Err(e)
            }
        }
    }

    fn resources(&self) -> Resources {
        let l = &self.config.limits;
        let mut r = Resources::default();
        r.memory.limit = l.memory_bytes.map(|m| m as i64);
        if let Some(c) = l.cpus {
            r.cpu.period = Some(100_000);
            r.cpu.quota = Some((c * 100_000.0).round() as i64);
        }
        r.pids.limit = l.pids.map(|p| p as i64);
        r
    }

    /// Starts the cleaner and the jailed child, waits for the child.
    fn supervise(
        &self,
        cgroup: &dyn CgroupManager,
        made: &Made,
        alive_r: OwnedFd,
        alive_w: RawFd,
        f: impl FnOnce(&Inside) -> i32,
    ) -> Result<i32, JailError> {
        let (_, threads) = crate::inside::status()?;
        if threads != 1 {
            return Err(JailError::Config(format!(
                "Jail::run must be called before any thread starts ({threads} threads run)"
            )));
        }
        // SAFETY: the process has one thread (checked above); the child only waits,
        // cleans and exits.
        match unsafe { libc::fork() } {
            -1 => return Err(JailError::last("fork (cleaner)")),
            0 => {
                // SAFETY: in the new child: its copy of the write end is closed (else it
                // would never see EOF), and setsid takes it out of the terminal's process
                // group, so a Ctrl-C aimed at the supervisor does not end it too.
                unsafe {
                    libc::close(alive_w);
                    libc::setsid();
                }
                let mut r = std::fs::File::from(alive_r);
                let mut seen = Vec::new();
                let _ = r.read_to_end(&mut seen);
                if seen != DONE {
                    cleanup(cgroup, made);
                }
                // SAFETY: _exit ends the cleaner without running the parent's atexit work.
                unsafe { libc::_exit(0) };
            }
            _ => drop(alive_r),
        }
        self.start_and_wait(cgroup, alive_w, f)
    }

    fn start_and_wait(
        &self,
        cgroup: &dyn CgroupManager,
        alive_w: RawFd,
        f: impl FnOnce(&Inside) -> i32,
    ) -> Result<i32, JailError> {
        let (go_r, go_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if self.config.new_netns {
            flags |= libc::CLONE_NEWNET;
        }
        let parent = std::process::id() as i32;
        // SAFETY: clone without CLONE_VM and without a new stack behaves as fork (the
        // child gets a copy of the one-threaded process); the flags add namespaces.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::c_ulong::from((flags | libc::SIGCHLD) as u32),
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(JailError::last("clone (jail namespaces)"));
        }
        if pid == 0 {
            // SAFETY: the child's copy of the cleaner's pipe: only the supervisor holds it.
            unsafe { libc::close(alive_w) };
            drop(go_w);
            drop(err_r);
            let code = self.child(parent, go_r, err_w, f);
            std::process::exit(code);
        }
        let pid = pid as i32;
        drop(go_r);
        drop(err_w);
        let joined = cgroup.add_process(pid);
        let mut go = std::fs::File::from(go_w);
        if joined.is_ok() {
            let _ = go.write_all(b"g");
        }
        drop(go);
        let status = wait(pid)?;
        joined?;
        let mut msg = String::new();
        let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
        if !msg.is_empty() {
            return Err(JailError::Inside(msg));
        }
        Ok(status)
    }

    /// The jailed child: waits to be in the cgroup, enters the root, runs `f`.
    fn child(&self, parent: i32, go: OwnedFd, err: OwnedFd, f: impl FnOnce(&Inside) -> i32) -> i32 {
        let mut err = std::fs::File::from(err);
        let setup = (|| {
            // SAFETY: prctl and getppid with integer arguments.
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(JailError::last("prctl(PR_SET_PDEATHSIG)"));
                }
                // In a new PID namespace the parent shows as 0.
                if libc::getppid() != 0 && libc::getppid() != parent {
                    return Err(JailError::Config("the supervisor ended".into()));
                }
            }
            let mut b = [0u8; 1];
            match std::fs::File::from(go).read(&mut b) {
                Ok(1) => {}
                _ => return Err(JailError::Config("not moved into the jail's cgroup".into())),
            }
            enter_root(&LinuxSyscalls, &self.config)
        })();
        if let Err(e) = setup {
            let _ = err.write_all(e.to_string().as_bytes());
            return 1;
        }
        drop(err);
        f(&Inside {
            config: self.config.clone(),
        })
    }
}

/// What the supervisor tells the cleaner once it cleaned up itself.
const DONE: &[u8] = b"done";

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::last("pipe2"));
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits for `pid`; its exit status, or 128 + the signal that killed it.
fn wait(pid: i32) -> Result<i32, JailError> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a status we own.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
        } else if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(JailError::last("waitpid"));
        }
    }
}

/// Creates `dir` and its missing parents under `root`, recording each.
fn mkdirs(root: &Path, dir: &Path, made: &mut Made) -> Result<(), JailError> {
    let mut missing = Vec::new();
    let mut d = dir;
    while d != root && !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.into_iter().rev() {
        std::fs::create_dir(&m).map_err(JailError::io("cannot create", &m))?;
        made.paths.push(m);
    }
    Ok(())
}

fn remove_cgroup(cgroup: &dyn CgroupManager) {
    if cgroup.exists() {
        if let Err(e) = cgroup.kill_all() {
            log::warn!("jail cgroup {}: {e}", cgroup.path());
        }
        if let Err(e) = cgroup.delete() {
            log::warn!("jail cgroup {}: {e}", cgroup.path());
        }
    }
}

/// Removes the cgroup (killing what is left in it) and what was made under the root:
/// the placeholders, anything the jailed process created there (an API socket), and the
/// root itself when the jail created it.
fn cleanup(cgroup: &dyn CgroupManager, made: &Made) {
    remove_cgroup(cgroup);
    if made.root.as_os_str().is_empty() {
        return;
    }
    if made.created_root {
        if let Err(e) = std::fs::remove_dir_all(&made.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("jail root {}: {e}", made.root.display());
            }
        }
        return;
    }
    // The root was given (empty): empty it again. remove_dir_all does not follow links.
    if let Ok(entries) = std::fs::read_dir(&made.root) {
        for e in entries.flatten() {
            let p = e.path();
            let r = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
            if let Err(err) = r {
                log::warn!("jail root {}: {err}", p.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkdirs_records_only_what_it_made() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        let mut made = Made::default();
        mkdirs(d.path(), &d.path().join("a/b/c"), &mut made).unwrap();
        assert_eq!(
            made.paths,
            vec![d.path().join("a/b"), d.path().join("a/b/c")]
        );
        assert!(d.path().join("a/b/c").is_dir());
    }

    #[test]
    fn resources_follow_the_limits() {
        let mut c = JailConfig::new("r", "/srv/r", 65534, 65534);
        c.limits.memory_bytes = Some(256 << 20);
        c.limits.cpus = Some(1.5);
        c.limits.pids = Some(64);
        let r = Jail { config: c }.resources();
        assert_eq!(r.memory.limit, Some(256 << 20));
        assert_eq!((r.cpu.quota, r.cpu.period), (Some(150_000), Some(100_000)));
        assert_eq!(r.pids.limit, Some(64));
    }

    #[test]
    fn wait_reports_exit_codes_and_signals() {
        // SAFETY: a test child that exits at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit in the child.
            unsafe { libc::_exit(7) };
        }
        assert_eq!(wait(pid).unwrap(), 7);
    }
}
