//! The commands: create, start, run, exec, kill, delete, pause, resume, ps, update.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use virtkit_namespaces::idmap::{write_id_maps, IdMapping};
use virtkit_namespaces::namespace::NamespaceType;
use virtkit_namespaces::rootfs::{
    default_devices, propagation_flags, DeviceNode, MountSpec, RootfsConfig,
};
use virtkit_namespaces::LinuxSyscalls;

use crate::init::{self, GoAt, Init, Mode};
use crate::state::{check_id, Container, Saved, Status};
use crate::util::{self, recv_msg, send_msg};
use crate::{cgroup, cloned, dmz, hooks, process};

/// Options of `create` and `run`.
#[derive(Debug, Clone)]
pub struct CreateOpts {
    /// State root.
    pub root: PathBuf,
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
}

fn ns_type(t: LinuxNamespaceType) -> NamespaceType {
    match t {
        LinuxNamespaceType::Mount => NamespaceType::Mount,
        LinuxNamespaceType::Cgroup => NamespaceType::Cgroup,
        LinuxNamespaceType::Uts => NamespaceType::Uts,
        LinuxNamespaceType::Ipc => NamespaceType::Ipc,
        LinuxNamespaceType::User => NamespaceType::User,
        LinuxNamespaceType::Pid => NamespaceType::Pid,
        LinuxNamespaceType::Network => NamespaceType::Net,
        LinuxNamespaceType::Time => NamespaceType::Time,
    }
}

fn open_ns(path: &Path) -> Result<OwnedFd> {
    let f =
        std::fs::File::open(path).with_context(|| format!("open namespace {}", path.display()))?;
    Ok(f.into())
}

fn setns_self(fd: &OwnedFd, t: NamespaceType) -> Result<()> {
    // SAFETY: setns on a valid fd.
    if unsafe { libc::setns(fd.as_raw_fd(), t.clone_flag()) } < 0 {
        bail!(
            "join {} namespace: {}",
            t.proc_name(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `clone(2)` with `flags` used like fork: returns 0 in the child.
fn clone_fork(flags: i32) -> Result<i32> {
    // SAFETY: without CLONE_VM the child gets a copy of our address space and continues
    // here like after fork(); we are single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        bail!("clone: {}", std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("vktmp");
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("write pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write pid file {}", path.display()))?;
    Ok(())
}

fn mkfifo(path: &Path) -> Result<()> {
    let c = util::cstring(&path.to_string_lossy())?;
    // SAFETY: valid path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o622) } < 0 {
        bail!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // The umask took the write bit for others, which init needs in a user namespace.
    // SAFETY: valid path.
    if unsafe { libc::chmod(c.as_ptr(), 0o622) } < 0 {
        bail!(
            "chmod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn open_path(path: &Path) -> Result<OwnedFd> {
    let c = util::cstring(&path.to_string_lossy())?;
    // SAFETY: valid path; we own the returned fd.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "open {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_spec(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    Spec::load(&p).with_context(|| format!("load {}", p.display()))
}

/// The state JSON handed to hooks.
fn hook_state(c: &Container, status: &str) -> Vec<u8> {
    let mut v = c.oci_state();
    v["status"] = serde_json::Value::from(status);
    v["pid"] = serde_json::Value::from(c.saved.pid);
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A `cgroup` mount on v1: a tmpfs with the container's own directory of each
/// hierarchy bound at `<dest>/<hierarchy>` (as runc does), never the host's whole tree.
fn cgroup_v1_mounts(
    dest: &Path,
    options: &[String],
    cg_path: &str,
    dirs: &[PathBuf],
) -> Vec<MountSpec> {
    let keep: Vec<String> = options
        .iter()
        .filter(|o| ["nosuid", "noexec", "nodev"].contains(&o.as_str()))
        .cloned()
        .collect();
    let mut out = vec![MountSpec {
        source: Some(PathBuf::from("tmpfs")),
        destination: dest.to_path_buf(),
        fstype: Some("tmpfs".into()),
        options: [keep.clone(), vec!["mode=755".into(), "size=64k".into()]].concat(),
    }];
    let depth = Path::new(cg_path).components().count();
    for d in dirs {
        let Some(name) = d.ancestors().nth(depth).and_then(|m| m.file_name()) else {
            continue;
        };
        let mut o = vec!["rbind".to_string()];
        o.extend(keep.iter().cloned());
        out.push(MountSpec {
            source: Some(d.clone()),
            destination: dest.join(name),
            fstype: Some("bind".into()),
            options: o,
        });
    }
    out
}

fn rootfs_config(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    no_pivot: bool,
    userns: bool,
    cg: &dyn virtkit_cgroups::CgroupManager,
) -> Result<RootfsConfig> {
    let mut cfg = RootfsConfig::new(rootfs);
    cfg.no_pivot = no_pivot;
    cfg.bind_devices = userns;
    let linux = spec.linux().as_ref();
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_ref()) {
        if !p.is_empty() {
            cfg.propagation = propagation_flags(p)?;
        }
    }
    cfg.readonly_root = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    for m in spec.mounts().iter().flatten() {
        let src = m.source().as_ref().map(|s| {
            let is_bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind");
            if is_bind && s.is_relative() {
                bundle.join(s)
            } else {
                s.clone()
            }
        });
        let options = m.options().clone().unwrap_or_default();
        let ty = m.typ().as_deref();
        if matches!(ty, Some("cgroup") | Some("cgroup2")) {
            let ro = options.iter().any(|o| o == "ro");
            if cg.version() == virtkit_cgroups::CgroupVersion::V1 {
                cfg.mounts.extend(cgroup_v1_mounts(
                    m.destination(),
                    &options,
                    cg.path(),
                    &cg.dirs(),
                ));
                if ro {
                    cfg.readonly_paths.push(m.destination().clone());
                }
            } else {
                // In the container's cgroup namespace cgroup2 shows its own subtree.
                cfg.mounts.push(MountSpec {
                    source: Some(PathBuf::from("cgroup")),
                    destination: m.destination().clone(),
                    fstype: Some("cgroup2".into()),
                    options,
                });
            }
            continue;
        }
        cfg.mounts.push(MountSpec {
            source: src,
            destination: m.destination().clone(),
            fstype: m.typ().clone(),
            options,
        });
    }
    let mut devs = default_devices();
    if let Some(l) = linux {
        for d in l.devices().iter().flatten() {
            let kind = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::B => 'b',
                oci_spec::runtime::LinuxDeviceType::P => 'p',
                _ => 'c',
            };
            devs.retain(|x| x.path != *d.path());
            devs.push(DeviceNode {
                path: d.path().clone(),
                kind,
                major: d.major() as u32,
                minor: d.minor() as u32,
                mode: d.file_mode().unwrap_or(0o666),
            });
        }
        cfg.masked_paths = l
            .masked_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect();
        cfg.readonly_paths
            .extend(l.readonly_paths().iter().flatten().map(PathBuf::from));
    }
    cfg.devices = devs;
    Ok(cfg)
}

fn id_maps(v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>) -> Vec<IdMapping> {
    v.iter()
        .flatten()
        .map(|m| IdMapping {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// A container being created; cleaned up on drop unless committed.
struct Undo {
    /// The state directory, once we made it.
    dir: Option<PathBuf>,
    pid: i32,
    cgroup: Option<Box<dyn virtkit_cgroups::CgroupManager>>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.pid > 0 {
            let _ = util::kill(self.pid, libc::SIGKILL);
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
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
pub fn create(o: &CreateOpts) -> Result<()> {
    create_with(o, false, false).map(|_| ())
}

/// `create` for `create` and `run`. With `run_mode` there is no exec fifo: init goes on
/// to execve right after "ready" (see [`start_run`]).
fn create_with(
    o: &CreateOpts,
    foreground: bool,
    run_mode: bool,
) -> Result<(Container, Spec, OwnedFd)> {
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

    let dir = o.root.join(&o.id);
    let mut undo = Undo {
        dir: None,
        pid: 0,
        cgroup: None,
        armed: true,
    };
    // The state directory (which also says the id is taken). `create` needs it now, for
    // the exec fifo; `run` makes it after the clone, while init works.
    if !run_mode {
        make_state_dir(&o.root, &o.id)?;
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
    let cg = cgroup::open(&cg_path)?;
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

    // Namespaces: new ones become clone flags; paths are joined (pid and time by us,
    // since they apply to our children; the rest by the child).
    let mut flags = 0;
    let mut joins: Vec<(NamespaceType, OwnedFd)> = Vec::new();
    let mut new_user = false;
    let mut new_cgroupns = false;
    let mut have_mount = false;
    for ns in linux.namespaces().iter().flatten() {
        let t = ns_type(ns.typ());
        if t == NamespaceType::Mount {
            have_mount = true;
        }
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
    if !have_mount {
        bail!("config.json must ask for a mount namespace");
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
    let (parent_sock, child_sock) = util::seqpacket_pair()?;
    let joins_user = joins.iter().any(|(t, _)| *t == NamespaceType::User);
    let init = Init {
        sync: child_sock.as_raw_fd(),
        joins,
        plan,
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: o.preserve_fds,
        // In a user namespace the parent moves us (our ids may not own cgroupfs files).
        join_cgroup: if new_user || joins_user {
            None
        } else {
            Some(cgroup::open(&cg_path)?)
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
            state_json: hook_state(&c, "creating"),
        },
        dmz,
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
    let pid = clone_fork(flags)?;
    if pid == 0 {
        drop(parent_sock);
        init::child(&init);
    }
    drop(child_sock);
    drop(init);
    undo.pid = pid;
    if run_mode {
        make_state_dir(&o.root, &o.id)?;
        undo.dir = Some(dir.clone());
    }
    c.saved.pid = pid;
    c.saved.start_time = util::proc_stat(pid).map(|s| s.0).unwrap_or(0);
    // Saved before the cgroup exists, so `delete --force` after a crash finds init (by
    // this pid: it blocks on the exec fifo until `start`, even if we die after "ready")
    // and the cgroup. Until "ready" init dies with us (PR_SET_PDEATHSIG).
    c.save()?;
    cg.create()
        .with_context(|| format!("create cgroup {cg_path}"))?;
    undo.cgroup = Some(cgroup::open(&cg_path)?);
    cg.apply(&resources)
        .with_context(|| format!("apply resources to cgroup {cg_path}"))?;
    let sock = parent_sock.as_raw_fd();
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
    send_go(sock)?;
    loop {
        let m = recv_msg(sock)?;
        match m.as_slice() {
            b"hooks" => {
                let st = hook_state(&c, "creating");
                hooks::run("prestart", hooks.prestart().as_deref().unwrap_or(&[]), &st)?;
                hooks::run(
                    "createRuntime",
                    hooks.create_runtime().as_deref().unwrap_or(&[]),
                    &st,
                )?;
                let mut reply = b"go".to_vec();
                reply.extend_from_slice(&st);
                send_msg(sock, &reply)?;
            }
            b"ready" => {
                if through_dmz {
                    // Until init has exec'd the DMZ it is the runtime binary: the state
                    // reads "creating" (so `exec` cannot join it) until the EOF of that
                    // execve.
                    match recv_msg(sock)?.as_slice() {
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
    Ok((c, spec, parent_sock))
}

/// Makes the state directory `root/id` (and `root` if missing); an existing one means
/// the id is taken.
fn make_state_dir(root: &Path, id: &str) -> Result<()> {
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
            bail!("container with id {id} already exists")
        }
        Err(e) => Err(e).with_context(|| format!("create {}", dir.display())),
    }
}

/// Whether `run` may guard against CVE-2019-5736 with the exec DMZ alone (see
/// `crate::dmz`): the container gets a new PID namespace (no process of it or of anyone
/// else can see init before its execve), no hook runs inside it while init is the
/// runtime (createContainer, startContainer), and no seccomp profile (whose rules would
/// apply to the DMZ's own execve as well).
fn dmz_suffices(spec: &Spec) -> bool {
    let Some(linux) = spec.linux() else {
        return false;
    };
    let inside_hooks = spec.hooks().as_ref().is_some_and(|h| {
        [h.create_container(), h.start_container()]
            .iter()
            .any(|x| x.as_ref().is_some_and(|x| !x.is_empty()))
    });
    new_pid_namespace(spec) && !inside_hooks && linux.seccomp().is_none()
}

/// Whether the container gets a PID namespace of its own (a new one, not a path).
fn new_pid_namespace(spec: &Spec) -> bool {
    spec.linux().as_ref().is_some_and(|l| {
        l.namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
    })
}

/// The index of the first of `mounts` that needs the container's cgroup: a bind of one
/// of its directories `dirs` (v1) or a cgroup2 mount; `mounts.len()` if none does.
fn first_cgroup_mount(mounts: &[MountSpec], dirs: &[PathBuf]) -> usize {
    mounts
        .iter()
        .position(|m| {
            matches!(m.fstype.as_deref(), Some("cgroup" | "cgroup2"))
                || m.source
                    .as_deref()
                    .is_some_and(|s| dirs.iter().any(|d| s.starts_with(d)))
        })
        .unwrap_or(mounts.len())
}

/// Sends init its "go". When init has failed already (its end closed), the error is
/// init's own message, which it sent before exiting.
fn send_go(sock: i32) -> Result<()> {
    if let Err(e) = send_msg(sock, b"go") {
        if let Ok(m) = recv_msg(sock) {
            if let [b'E', rest @ ..] = m.as_slice() {
                bail!("{}", String::from_utf8_lossy(rest));
            }
        }
        return Err(e).context("send \"go\" to container init");
    }
    Ok(())
}

/// `start`: releases init from the exec fifo.
pub fn start(root: &Path, id: &str) -> Result<()> {
    start_with(root, id, None)
}

/// `start` with the config already parsed (by `run`).
fn start_with(root: &Path, id: &str, spec: Option<&Spec>) -> Result<()> {
    let c = Container::load(root, id)?;
    match c.status() {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        s => bail!("cannot start a container in the {} state", s.as_str()),
    }
    let fifo = c.fifo();
    let cp = util::cstring(&fifo.to_string_lossy())?;
    // SAFETY: valid path; we own the returned fd.
    let fd = unsafe {
        libc::open(
            cp.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!("open exec fifo: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n > 0 {
            let mut b = [0u8; 1];
            // SAFETY: valid 1-byte buffer.
            let r = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if r == 1 {
                break;
            }
        }
        if !util::alive(c.saved.pid, c.saved.start_time) {
            let _ = std::fs::remove_file(&fifo);
            bail!("container init exited before start");
        }
    }
    let _ = std::fs::remove_file(&fifo);
    let loaded;
    let spec = match spec {
        Some(s) => Some(s),
        None => {
            loaded = load_spec(&c.saved.bundle).ok();
            loaded.as_ref()
        }
    };
    if let Some(spec) = spec {
        if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststart().clone()) {
            if let Err(e) = hooks::run("poststart", &h, &hook_state(&c, "running")) {
                log_warn(&format!("{e:#}"));
            }
        }
    }
    Ok(())
}

fn log_warn(msg: &str) {
    crate::log::warn(msg);
}

/// `start` within `run`: init, which has no exec fifo, started at "ready"; what is left
/// are the poststart hooks.
fn start_run(c: &Container, spec: &Spec) -> Result<()> {
    if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststart().clone()) {
        if let Err(e) = hooks::run("poststart", &h, &hook_state(c, "running")) {
            log_warn(&format!("{e:#}"));
        }
    }
    Ok(())
}

/// Waits for our child `pid`; returns its exit code (128+signal when killed).
fn wait_child(pid: i32) -> Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("waitpid {pid}: {e}");
        }
        break;
    }
    Ok(if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    })
}

/// `run`: create + start, then (unless detached) wait and delete. Returns the exit code.
pub fn run(o: &CreateOpts, detach: bool) -> Result<i32> {
    let (c, spec, _sock) = create_with(o, !detach, true)?;
    if let Err(e) = start_run(&c, &spec) {
        let _ = delete_with(&o.root, &o.id, true, Some(&spec));
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = wait_child(c.saved.pid)?;
    // Init is reaped: the state needs no reload and init no signal. A new PID namespace
    // ended with its init (the kernel kills and waits for every process in it), so the
    // cgroup has nothing left to kill unless someone moved a process in.
    delete_loaded(&c, Status::Stopped, Some(&spec), new_pid_namespace(&spec))?;
    Ok(code)
}

/// `kill`.
pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    let c = Container::load(root, id)?;
    if c.status() == Status::Stopped {
        bail!("container not running");
    }
    if all && !c.saved.cgroup_path.is_empty() {
        cgroup::open(&c.saved.cgroup_path)?.signal_all(sig)?;
        return Ok(());
    }
    util::kill(c.saved.pid, sig).with_context(|| format!("kill {}", c.saved.pid))
}

fn wait_dead(pid: i32, start: u64, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while util::alive(pid, start) {
        // Reap if it is our child (run in the foreground).
        // SAFETY: non-blocking waitpid on a pid; harmless if it is not our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// `delete`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    delete_with(root, id, force, None)
}

/// `delete` with the config already parsed (by `run`).
fn delete_with(root: &Path, id: &str, force: bool, spec: Option<&Spec>) -> Result<()> {
    check_id(id)?;
    let dir = root.join(id);
    let c = match Container::load(root, id) {
        Ok(c) => c,
        Err(e) => {
            // As runc: `delete --force` of a container that does not exist succeeds, and
            // one whose state cannot be read is removed.
            if force && !dir.exists() {
                return Ok(());
            }
            if force {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("remove {}", dir.display()))?;
                return Ok(());
            }
            return Err(e);
        }
    };
    let status = c.status();
    match status {
        Status::Stopped | Status::Created => {}
        _ if force => {}
        s => bail!(
            "cannot delete container {id} that is not stopped: {}",
            s.as_str()
        ),
    }
    delete_loaded(&c, status, spec, false)
}

/// `delete` of a loaded container in `status`: kills what is left, removes the cgroup,
/// runs poststop hooks and removes the state directory. With `likely_empty` (init of a
/// new PID namespace reaped) the cgroup is removed first and only searched for processes
/// to kill if that fails.
fn delete_loaded(
    c: &Container,
    status: Status,
    spec: Option<&Spec>,
    likely_empty: bool,
) -> Result<()> {
    let cg = if c.saved.cgroup_path.is_empty() {
        None
    } else {
        cgroup::open(&c.saved.cgroup_path).ok()
    };
    let cg = match cg {
        Some(cg) if likely_empty && cg.delete().is_ok() => None,
        other => other,
    };
    if status != Status::Stopped {
        let _ = util::kill(c.saved.pid, libc::SIGKILL);
    }
    if let Some(cg) = &cg {
        if status == Status::Paused {
            let _ = cg.thaw();
        }
        // A cgroup that is already gone has no processes: kill_all finds none.
        cg.kill_all().context("kill the container's processes")?;
    }
    if !wait_dead(c.saved.pid, c.saved.start_time, Duration::from_secs(10)) {
        bail!("init {} did not die", c.saved.pid);
    }
    if let Some(cg) = &cg {
        cg.delete()
            .with_context(|| format!("remove cgroup {}", c.saved.cgroup_path))?;
    }
    if c.saved.create_done {
        let loaded;
        let spec = match spec {
            Some(s) => Some(s),
            None => {
                loaded = load_spec(&c.saved.bundle).ok();
                loaded.as_ref()
            }
        };
        if let Some(spec) = spec {
            if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststop().clone()) {
                if let Err(e) = hooks::run("poststop", &h, &hook_state(c, "stopped")) {
                    log_warn(&format!("{e:#}"));
                }
            }
        }
    }
    c.remove_dir()
}

/// `pause` / `resume`.
pub fn pause(root: &Path, id: &str, pause: bool) -> Result<()> {
    let c = Container::load(root, id)?;
    let s = c.status();
    let cg = cgroup::open(&c.saved.cgroup_path)?;
    if pause {
        if s != Status::Running && s != Status::Created {
            bail!("container not running");
        }
        cg.freeze()?;
    } else {
        if s != Status::Paused {
            bail!("container not paused");
        }
        cg.thaw()?;
    }
    Ok(())
}

/// `ps`: pids in the container's cgroup.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    let c = Container::load(root, id)?;
    if c.saved.cgroup_path.is_empty() {
        return Ok(vec![c.saved.pid]);
    }
    Ok(cgroup::open(&c.saved.cgroup_path)?.pids()?)
}

/// `update --resources`.
pub fn update(root: &Path, id: &str, resources_json: &[u8]) -> Result<()> {
    let c = Container::load(root, id)?;
    let r: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(resources_json).context("parse resources JSON")?;
    let cg = cgroup::open(&c.saved.cgroup_path)?;
    cg.apply(&cgroup::update_resources(&r)?)?;
    Ok(())
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    /// State root.
    pub root: PathBuf,
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
                .map_err(|_| anyhow::anyhow!("--cap {name}: unknown capability"))?;
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
    Ok(())
}

/// `exec`: a new process in a running container. Returns its exit code (0 if detached).
pub fn exec(o: &ExecOpts) -> Result<i32> {
    let c = Container::load(&o.root, &o.id)?;
    match c.status() {
        Status::Running | Status::Created => {}
        // runc's `--ignore-paused` is not offered: the new process would join the frozen
        // cgroup before telling the runtime it started.
        Status::Paused => bail!("cannot exec in a paused container: resume it first"),
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
    if !util::alive(pid, c.saved.start_time) {
        bail!("container {} is not running", o.id);
    }
    let cg = if c.saved.cgroup_path.is_empty() {
        None
    } else {
        Some(cgroup::open(&c.saved.cgroup_path)?)
    };
    let (parent_sock, child_sock) = util::seqpacket_pair()?;
    let joins_user = joins.iter().any(|(t, _)| *t == NamespaceType::User);
    let init = Init {
        sync: child_sock.as_raw_fd(),
        joins,
        plan,
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: o.preserve_fds,
        join_cgroup: match &c.saved.cgroup_path {
            p if p.is_empty() || joins_user => None,
            p => Some(cgroup::open(p)?),
        },
        userns: joins_user,
        new_cgroupns: false,
        go_at: GoAt::Start,
        hooks_msg: false,
        mode: Mode::Exec,
        dmz: None,
    };
    let joins_itself = init.join_cgroup.is_some();
    let child = clone_fork(0)?;
    if child == 0 {
        drop(parent_sock);
        init::child(&init);
    }
    drop(child_sock);
    drop(init);
    let sock = parent_sock.as_raw_fd();
    let fail = |e: anyhow::Error| -> anyhow::Error {
        let _ = util::kill(child, libc::SIGKILL);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        e
    };
    if let Some(cg) = cg.as_deref() {
        if !joins_itself {
            cg.add_process(child)
                .context("add exec process to the container's cgroup")
                .map_err(fail)?;
        }
    }
    send_msg(sock, b"go").map_err(|e| fail(e.into()))?;
    let m = recv_msg(sock).map_err(|e| fail(e.into()))?;
    match m.as_slice() {
        b"ready" => {}
        [b'E', rest @ ..] => {
            return Err(fail(anyhow::anyhow!("{}", String::from_utf8_lossy(rest))))
        }
        _ => return Err(fail(anyhow::anyhow!("exec process exited during setup"))),
    }
    // EOF: execve succeeded (the socket was close-on-exec).
    let m = recv_msg(sock)?;
    if let [b'E', rest @ ..] = m.as_slice() {
        let _ = wait_child(child);
        bail!("{}", String::from_utf8_lossy(rest));
    }
    if let Some(pf) = &o.pid_file {
        write_pid_file(pf, child)?;
    }
    if o.detach {
        return Ok(0);
    }
    wait_child(child)
}
