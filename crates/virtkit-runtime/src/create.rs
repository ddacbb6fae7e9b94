//! `create`: everything up to the container's init blocking on the exec fifo (or, for
//! `run`, up to init's execve).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use virtkit_namespaces::idmap::write_id_maps;
use virtkit_namespaces::namespace::NamespaceType;
use virtkit_namespaces::LinuxSyscalls;

use crate::error::{bail, Context, Error, Result};
use crate::host::{Channel, Host};
use crate::init::{self, GoAt, Init, Mode};
use crate::lsm::Lsm;
use crate::placement::Placement;
use crate::spec::{
    check_without_mount_ns, dmz_suffices, first_cgroup_mount, hook_state, id_maps, load_spec,
    ns_type, rootfs_config, time_offsets,
};
use crate::state::{check_id, Container, Saved};
use crate::sys::{mkfifo, open_ns, open_path, setns_self, write_pid_file};
use crate::util;
use crate::{cgroup, cloned, dmz, notify, process, sysctl, Runtime};

/// Options of `create` and `run`.
#[derive(Debug, Clone)]
pub struct CreateOpts {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    pub console_socket: Option<PathBuf>,
    /// MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Extra fds passed to the container after stdio.
    pub preserve_fds: u32,
    /// Join a new session keyring `_ses.<id>` (runc's default; false is
    /// `--no-new-keyring`).
    pub new_keyring: bool,
}

impl CreateOpts {
    /// Options for container `id` from the bundle directory `bundle`: no pid file, no
    /// console socket, pivot_root, no extra fds, a new session keyring.
    pub fn new(id: impl Into<String>, bundle: impl Into<PathBuf>) -> Self {
        CreateOpts {
            id: id.into(),
            bundle: bundle.into(),
            pid_file: None,
            console_socket: None,
            no_pivot: false,
            preserve_fds: 0,
            new_keyring: true,
        }
    }
}

/// A container being created; cleaned up on drop unless committed.
struct Undo<'a> {
    host: &'a dyn Host,
    /// The state directory, once we made it.
    dir: Option<PathBuf>,
    pid: i32,
    cgroup: Option<Box<dyn virtkit_cgroups::CgroupManager>>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.pid > 0 {
            let _ = self.host.kill(self.pid, libc::SIGKILL);
            let _ = self.host.wait(self.pid);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill_all();
            let _ = cg.delete();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `create`: everything up to init blocking on the exec fifo.
impl Runtime {
    /// `create`: everything up to the container's init blocking on the exec fifo;
    /// [`Runtime::start`] releases it. On failure nothing is left: no state
    /// directory, no cgroup, no process.
    pub fn create(&self, o: &CreateOpts) -> Result<()> {
        create_with(self, o, false, false).map(|_| ())
    }
}

/// `create` for `create` and `run`. With `run_mode` there is no exec fifo: init goes on
/// to execve right after "ready" (see [`start_run`]).
pub(crate) fn create_with(
    rt: &Runtime,
    o: &CreateOpts,
    foreground: bool,
    run_mode: bool,
) -> Result<(Container, Spec, Box<dyn Channel>)> {
    check_id(&o.id)?;
    let bundle = std::fs::canonicalize(&o.bundle)
        .with_context(|| format!("bundle {}", o.bundle.display()))?;
    let spec = load_spec(&bundle)?;
    // CVE-2019-5736 for `run` (`create` re-executed already): the exec DMZ where it is
    // enough, else the re-exec now (nothing was changed yet; it starts over from a
    // read-only copy of the binary).
    let dmz = if run_mode && !cloned::is_sealed() {
        if dmz_suffices(&spec) {
            Some(dmz::sealed()?)
        } else {
            cloned::ensure()?;
            None
        }
    } else {
        None
    };
    let root_path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .context("config.json has no root.path")?;
    let rootfs = std::fs::canonicalize(bundle.join(&root_path))
        .with_context(|| format!("rootfs {}", bundle.join(&root_path).display()))?;
    let process = spec
        .process()
        .as_ref()
        .context("config.json has no process")?;
    let linux = spec
        .linux()
        .as_ref()
        .context("config.json has no linux section")?;
    // runc's checks of what would change the host rather than the container, before
    // anything is made: sethostname without a UTS namespace would rename the host, a
    // sysctl outside the container's namespaces would set the host's value.
    let have_uts = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Uts);
    for (field, set) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if !have_uts && set.as_deref().is_some_and(|h| !h.is_empty()) {
            bail!("unable to set {field} without a private UTS namespace");
        }
    }
    sysctl::check(linux)?;

    let dir = rt.root().join(&o.id);
    let mut undo = Undo {
        host: rt.host(),
        dir: None,
        pid: 0,
        cgroup: None,
        armed: true,
    };
    // The state directory (which also says the id is taken). `create` needs it now, for
    // the exec fifo; `run` makes it after the clone, while init works.
    if !run_mode {
        make_state_dir(rt.root(), &o.id)?;
        undo.dir = Some(dir.clone());
    }
    let cg_path = cgroup::cgroup_path(linux.cgroups_path().as_deref(), &o.id);
    let mut c = Container {
        dir: dir.clone(),
        saved: Saved {
            id: o.id.clone(),
            pid: 0,
            start_time: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: util::rfc3339_now(),
            annotations: spec
                .annotations()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cgroup_path: cg_path.clone(),
            create_done: false,
            owner: String::new(),
        },
    };
    // The cgroup itself is made after the clone, while init sets up the rootfs.
    let cg = rt.host().cgroup(&cg_path)?;
    let resources = cgroup::create_resources(linux.resources().as_ref())?;

    let fifo = if run_mode {
        None
    } else {
        let fifo_path = c.fifo();
        mkfifo(&fifo_path)?;
        Some(open_path(&fifo_path)?)
    };

    let mut p = process.clone();
    let console = match (&o.console_socket, p.terminal().unwrap_or(false)) {
        (Some(s), true) => Some(util::connect_unix(s)?),
        (None, true) if foreground => {
            // `run` without a console socket: the container shares our stdio.
            p.set_terminal(Some(false));
            None
        }
        _ => None,
    };
    let plan = process::plan(&p, linux.seccomp().as_ref())?;
    let listener = notify::listener(linux.seccomp().as_ref(), plan.seccomp_listener)?;
    // execCPUAffinity is for `exec`'s processes only (the spec: not the init process).
    let mut for_init = p.clone();
    for_init.set_exec_cpu_affinity(None);
    let placement = Placement::from_spec(&for_init, Some(linux))?;
    let lsm = Lsm::from_spec(&p, Some(linux), Path::new("/"))?;

    // Namespaces: new ones become clone flags; paths are joined (pid and time by us,
    // since they apply to our children; the rest by the child).
    let mut flags = 0;
    let mut joins: Vec<(NamespaceType, OwnedFd)> = Vec::new();
    let mut new_user = false;
    let mut new_cgroupns = false;
    let mut have_mount = false;
    let time_offsets = time_offsets(&spec)?;
    let mut time_offsets_set = false;
    for ns in linux.namespaces().iter().flatten() {
        let t = ns_type(ns.typ());
        have_mount |= t == NamespaceType::Mount;
        match ns.path() {
            Some(path) => {
                let fd = open_ns(path)?;
                match t {
                    NamespaceType::Pid | NamespaceType::Time => setns_self(&fd, t)?,
                    _ => joins.push((t, fd)),
                }
            }
            None if t == NamespaceType::Time => {
                // SAFETY: unshare with a flag; we are single-threaded.
                if unsafe { libc::unshare(t.clone_flag()) } < 0 {
                    bail!(
                        "unshare time namespace: {}",
                        std::io::Error::last_os_error()
                    );
                }
                // The offsets can be set only until a process enters the namespace:
                // now, before init is cloned into it.
                if let Some(lines) = &time_offsets {
                    std::fs::write("/proc/self/timens_offsets", lines)
                        .context("write /proc/self/timens_offsets")?;
                    time_offsets_set = true;
                }
            }
            None if t == NamespaceType::Cgroup => {
                // Made by init once it is in its cgroup, so that cgroup is the root of
                // the namespace (a clone flag would root it at ours).
                new_cgroupns = true;
            }
            None => {
                if t == NamespaceType::User {
                    new_user = true;
                }
                flags |= t.clone_flag();
            }
        }
    }
    // Without a mount namespace: no mount at all, a chroot into the rootfs.
    let chroot = if have_mount {
        None
    } else {
        let userns = new_user || joins.iter().any(|(t, _)| *t == NamespaceType::User);
        check_without_mount_ns(&spec, userns)?;
        Some(open_path(&rootfs)?)
    };
    if time_offsets.is_some() && !time_offsets_set {
        bail!("linux.timeOffsets needs a new time namespace (a \"time\" namespace without a path)");
    }
    // User namespace first, mount namespace last.
    joins.sort_by_key(|(t, _)| NamespaceType::JOIN_ORDER.iter().position(|x| x == t));
    let rootfs_cfg = rootfs_config(&spec, &bundle, &rootfs, o.no_pivot, new_user, cg.as_ref())?;
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    let sysctl: Vec<(String, String)> = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let hooks = spec.hooks().clone().unwrap_or_default();
    let joins_user = joins.iter().any(|(t, _)| *t == NamespaceType::User);
    let init = Init {
        // Set in the child, to its end of the channel.
        sync: -1,
        joins,
        plan,
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: o.preserve_fds,
        // In a user namespace the parent moves us (our ids may not own cgroupfs files).
        join_cgroup: if new_user || joins_user {
            None
        } else {
            Some(rt.host().cgroup(&cg_path)?)
        },
        userns: new_user || joins_user,
        new_cgroupns,
        go_at: GoAt::Start,
        hooks_msg: [
            hooks.prestart(),
            hooks.create_runtime(),
            hooks.create_container(),
        ]
        .iter()
        .any(|h| h.as_ref().is_some_and(|h| !h.is_empty())),
        mode: Mode::Create {
            rootfs: Box::new(rootfs_cfg),
            hostname,
            domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
            sysctl,
            fifo: fifo.as_ref().map(|f| f.as_raw_fd()),
            create_container: hooks.create_container().clone().unwrap_or_default(),
            start_container: hooks.start_container().clone().unwrap_or_default(),
            state_json: hook_state(rt.host(), &c, "creating"),
        },
        dmz,
        placement,
        session_keyring: o.new_keyring.then(|| format!("_ses.{}", o.id)),
        lsm,
        chroot,
    };

    let init_joins_itself = init.join_cgroup.is_some();
    let through_dmz = init.dmz.is_some();
    let mut init = init;
    // Init waits for "go" at its first step that needs the cgroup, and meanwhile we make
    // the cgroup. From the start when we have work on init itself first (id maps; moving
    // it into the cgroup), or when it joins a mount namespace where the host's cgroupfs
    // may not be visible.
    let joins_mount = init.joins.iter().any(|(t, _)| *t == NamespaceType::Mount);
    if init_joins_itself && !new_user && !joins_mount {
        if let Mode::Create { rootfs, .. } = &init.mode {
            init.go_at = GoAt::BeforeMount(first_cgroup_mount(&rootfs.mounts, &cg.dirs()));
        }
    }
    let (pid, chan) = rt.host().spawn(flags, &mut |sync| {
        init.sync = sync;
        init::child(&init)
    })?;
    drop(init);
    undo.pid = pid;
    if run_mode {
        make_state_dir(rt.root(), &o.id)?;
        undo.dir = Some(dir.clone());
    }
    c.saved.pid = pid;
    c.saved.start_time = rt.host().proc_stat(pid).map(|s| s.0).unwrap_or(0);
    // Saved before the cgroup exists, so `delete --force` after a crash finds init (by
    // this pid: it blocks on the exec fifo until `start`, even if we die after "ready")
    // and the cgroup. Until "ready" init dies with us (PR_SET_PDEATHSIG).
    c.save()?;
    cg.create()
        .with_context(|| format!("create cgroup {cg_path}"))?;
    undo.cgroup = Some(rt.host().cgroup(&cg_path)?);
    cg.apply(&resources)
        .with_context(|| format!("apply resources to cgroup {cg_path}"))?;
    if new_user {
        write_id_maps(
            &LinuxSyscalls,
            pid,
            &id_maps(linux.uid_mappings()),
            &id_maps(linux.gid_mappings()),
            false,
        )?;
    }
    // Usually init moves itself into the cgroup (cheaper: see CgroupManager::join_self).
    if !init_joins_itself {
        cg.add_process(pid)
            .with_context(|| format!("add init {pid} to cgroup {cg_path}"))?;
    }
    send_go(chan.as_ref())?;
    loop {
        let (m, passed) = chan.recv_fd()?;
        match m.as_slice() {
            b"seccomp" => {
                let (Some(fd), Some(l)) = (passed, &listener) else {
                    bail!("init sent a seccomp listener without a descriptor or a listenerPath");
                };
                l.send(&fd, pid, c.oci_state(rt.host()))?;
            }
            b"hooks" => {
                let st = hook_state(rt.host(), &c, "creating");
                rt.host()
                    .run_hooks("prestart", hooks.prestart().as_deref().unwrap_or(&[]), &st)?;
                rt.host().run_hooks(
                    "createRuntime",
                    hooks.create_runtime().as_deref().unwrap_or(&[]),
                    &st,
                )?;
                let mut reply = b"go".to_vec();
                reply.extend_from_slice(&st);
                chan.send(&reply)?;
            }
            b"ready" => {
                if through_dmz {
                    // Until init has exec'd the DMZ it is the runtime binary: the state
                    // reads "creating" (so `exec` cannot join it) until the EOF of that
                    // execve.
                    match chan.recv()?.as_slice() {
                        [] => {}
                        [b'E', rest @ ..] => bail!("{}", String::from_utf8_lossy(rest)),
                        other => bail!(
                            "unexpected message from init: {:?}",
                            String::from_utf8_lossy(other)
                        ),
                    }
                }
                break;
            }
            [b'E', rest @ ..] => bail!("{}", String::from_utf8_lossy(rest)),
            [] => bail!("container init exited during setup"),
            other => bail!(
                "unexpected message from init: {:?}",
                String::from_utf8_lossy(other)
            ),
        }
    }
    c.saved.create_done = true;
    c.save()?;
    if let Some(pf) = &o.pid_file {
        write_pid_file(pf, pid)?;
    }
    undo.armed = false;
    Ok((c, spec, chan))
}

/// Makes the state directory `root/id` (and `root` if missing); an existing one means
/// the id is taken.
pub(crate) fn make_state_dir(root: &Path, id: &str) -> Result<()> {
    let dir = root.join(id);
    let r = match std::fs::create_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root)
                .with_context(|| format!("create state root {}", root.display()))?;
            std::fs::create_dir(&dir)
        }
        r => r,
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Error::Exists { id: id.to_string() })
        }
        Err(e) => Err(e).with_context(|| format!("create {}", dir.display())),
    }
}

/// Sends init its "go". When init has failed already (its end closed), the error is
/// init's own message, which it sent before exiting.
pub(crate) fn send_go(chan: &dyn Channel) -> Result<()> {
    if let Err(e) = chan.send(b"go") {
        if let Ok(m) = chan.recv() {
            if let [b'E', rest @ ..] = m.as_slice() {
                bail!("{}", String::from_utf8_lossy(rest));
            }
        }
        return Err(e).context("send \"go\" to container init");
    }
    Ok(())
}
