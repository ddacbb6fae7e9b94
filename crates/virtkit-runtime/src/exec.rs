//! `exec`: a new process in a running container.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Process;
use virtkit_namespaces::namespace::NamespaceType;

use crate::error::{bail, err, Context, Error, Result};
use crate::init::{self, GoAt, Init, Mode};
use crate::lsm::Lsm;
use crate::placement::Placement;
use crate::spec::load_spec;
use crate::state::Status;
use crate::sys::{open_ns, open_path, setns_self, write_pid_file};
use crate::util;
use crate::{notify, process, Runtime};

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    /// Container id.
    pub id: String,
    /// `--process` JSON file.
    pub process: Option<PathBuf>,
    /// Command line (when no --process).
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// `uid[:gid]`.
    pub user: Option<String>,
    /// Allocate a pty.
    pub tty: bool,
    /// Return after the process started.
    pub detach: bool,
    /// Where to write its pid.
    pub pid_file: Option<PathBuf>,
    /// Socket that gets the pty master.
    pub console_socket: Option<PathBuf>,
    /// Extra fds.
    pub preserve_fds: u32,
    /// `--cap`: capabilities added to the bounding, effective and permitted sets (and the
    /// ambient set when the process has inheritable ones), as runc adds them.
    pub caps: Vec<String>,
    /// `--additional-gids`.
    pub additional_gids: Vec<u32>,
    /// `--no-new-privs`.
    pub no_new_privs: bool,
    /// `--apparmor`: the AppArmor profile (over the process's).
    pub apparmor: Option<String>,
    /// `--process-label`: the SELinux label (over the process's).
    pub process_label: Option<String>,
    /// `--cgroup`: run the process in this existing sub-cgroup of the container's
    /// cgroup (a path relative to it; runc's per-controller `controller:path` form is
    /// refused).
    pub sub_cgroup: Option<String>,
    /// `--ignore-paused`: exec into a paused container too. As with runc, the new
    /// process joins the frozen cgroup and freezes there: `exec` returns (or, detached,
    /// reports the process started) only once the container is resumed.
    pub ignore_paused: bool,
}

/// The cgroup an exec'd process joins: the container's, or `sub` below it (`--cgroup`).
fn exec_cgroup_path(container: &str, sub: Option<&str>) -> Result<Option<String>> {
    let Some(sub) = sub else {
        return Ok((!container.is_empty()).then(|| container.to_string()));
    };
    if container.is_empty() {
        bail!("exec --cgroup: the container has no cgroup");
    }
    if sub.contains(':') {
        bail!("exec --cgroup {sub:?}: the controller:path form is not supported (give a path)");
    }
    let rel = sub.trim_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("exec --cgroup {sub:?}: a relative path below the container's cgroup");
    }
    Ok(Some(format!("{}/{rel}", container.trim_end_matches('/'))))
}

/// Sets `KEY=value` entries over `env`: a key already there takes the new value (runc's
/// `exec --env` overrides the config's), new keys are appended.
fn override_env(env: &mut Vec<String>, with: &[String]) {
    for kv in with {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(e) => e.clone_from(kv),
            None => env.push(kv.clone()),
        }
    }
}

/// Applies `exec`'s `--cap`, `--additional-gids` and `--no-new-privs` to `p`.
fn apply_exec_flags(p: &mut Process, o: &ExecOpts) -> Result<()> {
    if !o.caps.is_empty() {
        use oci_spec::runtime::{Capability, LinuxCapabilities};
        let mut caps: LinuxCapabilities = p.capabilities().clone().unwrap_or_default();
        let mut added = Vec::new();
        for name in &o.caps {
            let full = if name.starts_with("CAP_") {
                name.clone()
            } else {
                format!("CAP_{name}")
            };
            // As the config spells it (`CAP_...`), through the same deserializer.
            let cap: Capability = serde_json::from_value(serde_json::Value::String(full))
                .map_err(|_| err!("--cap {name}: unknown capability"))?;
            added.push(cap);
        }
        let add = |set: Option<&oci_spec::runtime::Capabilities>| {
            let mut s = set.cloned().unwrap_or_default();
            s.extend(added.iter().copied());
            Some(s)
        };
        let has_inheritable = caps.inheritable().as_ref().is_some_and(|i| !i.is_empty());
        let (b, e, pm) = (
            add(caps.bounding().as_ref()),
            add(caps.effective().as_ref()),
            add(caps.permitted().as_ref()),
        );
        caps.set_bounding(b).set_effective(e).set_permitted(pm);
        if has_inheritable {
            let a = add(caps.ambient().as_ref());
            caps.set_ambient(a);
        }
        p.set_capabilities(Some(caps));
    }
    if !o.additional_gids.is_empty() {
        let mut user = p.user().clone();
        let mut gids = user.additional_gids().clone().unwrap_or_default();
        gids.extend(o.additional_gids.iter().copied());
        user.set_additional_gids(Some(gids));
        p.set_user(user);
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(a) = &o.apparmor {
        p.set_apparmor_profile(Some(a.clone()));
    }
    if let Some(l) = &o.process_label {
        p.set_selinux_label(Some(l.clone()));
    }
    Ok(())
}

impl Runtime {
    /// `exec`: a new process in running container `o.id`, set up as the container's own
    /// (namespaces, cgroup, identity, capabilities, seccomp). Returns its exit code (0
    /// when detached).
    pub fn exec(&self, o: &ExecOpts) -> Result<i32> {
        let c = self.load(&o.id)?;
        match self.status(&c) {
            Status::Running | Status::Created => {}
            Status::Paused if o.ignore_paused => {}
            // runc's words.
            Status::Paused => {
                bail!("cannot exec in a paused container (use --ignore-paused to override)")
            }
            s => bail!("cannot exec in a {} container", s.as_str()),
        }
        let spec = load_spec(&c.saved.bundle)?;
        let mut p: Process = match &o.process {
            Some(f) => {
                let data = std::fs::read(f).with_context(|| format!("read {}", f.display()))?;
                serde_json::from_slice(&data).with_context(|| format!("parse {}", f.display()))?
            }
            None => {
                if o.args.is_empty() {
                    bail!("exec needs a command (or --process)");
                }
                let mut p = spec.process().clone().unwrap_or_default();
                p.set_args(Some(o.args.clone()));
                let mut env = p.env().clone().unwrap_or_default();
                override_env(&mut env, &o.env);
                p.set_env(Some(env));
                if let Some(cwd) = &o.cwd {
                    p.set_cwd(cwd.clone());
                }
                if let Some(u) = &o.user {
                    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                    let mut user = p.user().clone();
                    user.set_uid(uid.parse().context("--user uid")?);
                    user.set_gid(gid.parse().context("--user gid")?);
                    p.set_user(user);
                }
                p.set_terminal(Some(o.tty));
                p
            }
        };
        apply_exec_flags(&mut p, o)?;
        let console = match (&o.console_socket, p.terminal().unwrap_or(false)) {
            (Some(s), true) => Some(util::connect_unix(s)?),
            (None, true) if !o.detach => {
                p.set_terminal(Some(false));
                None
            }
            _ => None,
        };
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let plan = process::plan(&p, seccomp.as_ref())?;
        let placement = Placement::from_spec(&p, spec.linux().as_ref())?;
        let listener = notify::listener(seccomp.as_ref(), plan.seccomp_listener)?;
        let lsm = Lsm::from_spec(&p, None, std::path::Path::new("/"))?;
        let pid = c.saved.pid;
        let mut joins = Vec::new();
        for t in NamespaceType::JOIN_ORDER {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", t.proc_name()));
            let ours = PathBuf::from(format!("/proc/self/ns/{}", t.proc_name()));
            let (Ok(a), Ok(b)) = (std::fs::read_link(&theirs), std::fs::read_link(&ours)) else {
                continue;
            };
            if a == b {
                continue;
            }
            let fd = open_ns(&theirs)?;
            match t {
                NamespaceType::Pid | NamespaceType::Time => setns_self(&fd, t)?,
                _ => joins.push((t, fd)),
            }
        }
        // A container without a mount namespace of its own shares ours: its processes
        // live in a chroot, which the new one enters too (runc 1.1 leaves it on the
        // host's root).
        let chroot = if joins.iter().any(|(t, _)| *t == NamespaceType::Mount) {
            None
        } else {
            Some(open_path(Path::new(&format!("/proc/{pid}/root")))?)
        };
        if !self.host().alive(pid, c.saved.start_time) {
            bail!("container {} is not running", o.id);
        }
        let cg_path = exec_cgroup_path(&c.saved.cgroup_path, o.sub_cgroup.as_deref())?;
        let cg = match &cg_path {
            None => None,
            Some(p) => {
                let cg = self.host().cgroup(p)?;
                if o.sub_cgroup.is_some() && !cg.exists() {
                    bail!("exec --cgroup: cgroup {p} does not exist (create it first)");
                }
                Some(cg)
            }
        };
        let joins_user = joins.iter().any(|(t, _)| *t == NamespaceType::User);
        let mut init = Init {
            // Set in the child, to its end of the channel.
            sync: -1,
            joins,
            plan,
            console: console.as_ref().map(|c| c.as_raw_fd()),
            preserve_fds: o.preserve_fds,
            join_cgroup: match &cg_path {
                Some(p) if !joins_user => Some(self.host().cgroup(p)?),
                _ => None,
            },
            userns: joins_user,
            new_cgroupns: false,
            go_at: GoAt::Start,
            hooks_msg: false,
            mode: Mode::Exec,
            dmz: None,
            placement,
            // `exec` keeps the runtime's session keyring, as runc's does.
            session_keyring: None,
            lsm,
            chroot,
        };
        let joins_itself = init.join_cgroup.is_some();
        let (child, chan) = self.host().spawn(0, &mut |sync| {
            init.sync = sync;
            init::child(&init)
        })?;
        drop(init);
        let fail = |e: Error| -> Error {
            let _ = self.host().kill(child, libc::SIGKILL);
            let _ = self.host().wait(child);
            e
        };
        if let Some(cg) = cg.as_deref() {
            if !joins_itself {
                cg.add_process(child)
                    .context("add exec process to the container's cgroup")
                    .map_err(fail)?;
            }
        }
        chan.send(b"go").map_err(|e| fail(e.into()))?;
        loop {
            let (m, passed) = chan.recv_fd().map_err(|e| fail(e.into()))?;
            match (m.as_slice(), passed, &listener) {
                (b"ready", ..) => break,
                (b"seccomp", Some(fd), Some(l)) => {
                    l.send(&fd, child, c.oci_state(self.host())).map_err(fail)?;
                }
                ([b'E', rest @ ..], ..) => {
                    return Err(fail(err!("{}", String::from_utf8_lossy(rest))))
                }
                _ => return Err(fail(err!("exec process exited during setup"))),
            }
        }
        // EOF: execve succeeded (the socket was close-on-exec).
        let m = chan.recv()?;
        if let [b'E', rest @ ..] = m.as_slice() {
            let _ = self.host().wait(child);
            bail!("{}", String::from_utf8_lossy(rest));
        }
        if let Some(pf) = &o.pid_file {
            write_pid_file(pf, child)?;
        }
        if o.detach {
            return Ok(0);
        }
        self.host().wait(child)
    }
}

#[cfg(test)]
mod tests {
    use super::exec_cgroup_path;

    #[test]
    fn sub_cgroups_stay_below_the_containers() {
        assert_eq!(
            exec_cgroup_path("virtkit/c", None).unwrap().as_deref(),
            Some("virtkit/c")
        );
        assert_eq!(exec_cgroup_path("", None).unwrap(), None);
        assert_eq!(
            exec_cgroup_path("virtkit/c", Some("/a/b/"))
                .unwrap()
                .as_deref(),
            Some("virtkit/c/a/b")
        );
        for bad in ["..", "a/../../x", "cpu:a", "", "a//b"] {
            assert!(exec_cgroup_path("virtkit/c", Some(bad)).is_err(), "{bad:?}");
        }
        assert!(exec_cgroup_path("", Some("a")).is_err());
    }
}
