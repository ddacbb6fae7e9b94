//! The child side: from `clone` to `execve` of the container process.
//!
//! Protocol on the seqpacket sync socket (child's messages in quotes):
//! parent "go" once the cgroup exists (we wait for it where [`GoAt`] says: in a new
//! container, at the first rootfs mount that needs the cgroup, so the parent makes the
//! cgroup while we mount; from the start when the parent has work on us first, as id
//! maps in a user namespace; then we move ourselves into the cgroup unless the parent
//! did) → [create, only when there are prestart/createRuntime/createContainer hooks:
//! "hooks" (namespaces made, mounts prepared) → parent runs prestart/createRuntime hooks
//! → "go"] → "ready" → [create: block on exec.fifo until `start`; `run`: "ready" is the
//! start] → execve. Each skipped exchange is two fewer context switches on the path
//! that `run` measures. Any failure sends `E<message>`; a successful execve closes the
//! (close-on-exec) socket, which the parent reads as EOF.
//!
//! What keeps the known runtime escapes out:
//! - CVE-2019-5736 (the container overwrites the runtime binary through
//!   `/proc/<pid>/exe`, e.g. by running `/proc/self/exe` or a `#!/proc/self/exe` script
//!   as its entry point): `create` and `exec` first re-execute the runtime from a
//!   detached read-only bind mount of itself, or a sealed memfd copy (see
//!   `crate::cloned`), unless it already runs from a read-only mount or sealed memfd.
//!   This child is a fork of that process, so its `/proc/<pid>/exe` reopens for writing
//!   only with EROFS (or EPERM on the sealed memfd). The check `cloned::is_sealed` is
//!   cheap; the re-exec is skipped only when it holds. `run` does the same unless the
//!   container has a new PID namespace, no hooks inside it and no seccomp profile: then
//!   nothing can see this child before its execve, which goes through the sealed exec
//!   DMZ (`crate::dmz`), so `/proc/self/exe` at that execve is the DMZ, not the runtime.
//! - CVE-2024-21626 (a host fd leaked into the container, used as cwd to escape the
//!   rootfs): every fd from 3 + `--preserve-fds` up is marked close-on-exec
//!   (`cloexec_from`) before execve, the runtime's own fds are opened `O_CLOEXEC`, and
//!   `Plan::enter_cwd` checks after chdir that `getcwd` is inside the new root.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use oci_spec::runtime::Hook;
use virtkit_namespaces::namespace::NamespaceType;
use virtkit_namespaces::rootfs::{
    create_devices, finalize_rootfs, mount_in_root, pivot, prepare_rootfs_start, RootfsConfig,
};
use virtkit_namespaces::{LinuxSyscalls, Syscalls};

use crate::lsm::Lsm;
use crate::placement::Placement;
use crate::process::{cloexec_from, Plan};
use crate::util::{raw_stderr, recv_msg, send_fd, send_msg};

/// What the child does besides becoming the process.
#[derive(Debug)]
pub enum Mode {
    /// A new container: rootfs, hostname, sysctl, then wait on the exec fifo.
    Create {
        /// Rootfs setup.
        rootfs: Box<RootfsConfig>,
        /// Hostname (new UTS namespace only).
        hostname: Option<String>,
        /// Domain name.
        domainname: Option<String>,
        /// `linux.sysctl`.
        sysctl: Vec<(String, String)>,
        /// `O_PATH` fd of exec.fifo; `None` (`run`): wait for "start" on the sync
        /// socket instead.
        fifo: Option<RawFd>,
        /// createContainer hooks.
        create_container: Vec<Hook>,
        /// startContainer hooks.
        start_container: Vec<Hook>,
        /// State JSON for hooks.
        state_json: Vec<u8>,
    },
    /// A process joining a running container.
    Exec,
}

/// Where the child waits for the parent's "go".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAt {
    /// Before anything else (the parent writes id maps or moves us into the cgroup, or
    /// we join an existing mount namespace where the host's cgroupfs may not be).
    Start,
    /// In a new container, before mount number `n` of the rootfs config (`n` = the
    /// number of mounts: after the last one): the first mount that needs the cgroup
    /// (v1 binds of its directories, cgroup2). Until then the parent creates the
    /// cgroup and applies its limits while we set up the rootfs: two cores at work on
    /// one container.
    BeforeMount(usize),
}

/// Everything the child needs, prepared by the parent before `clone`.
#[derive(Debug)]
pub struct Init {
    /// Child end of the sync socket.
    pub sync: RawFd,
    /// Namespaces to join, in order (user first, mount last).
    pub joins: Vec<(NamespaceType, OwnedFd)>,
    /// The process.
    pub plan: Plan,
    /// Connected console socket when a pty is wanted.
    pub console: Option<RawFd>,
    /// Number of fds after stdio passed on purpose.
    pub preserve_fds: u32,
    /// In a new or joined user namespace: become its root before anything else.
    pub userns: bool,
    /// Unshare a cgroup namespace after joining the cgroup (so it is the root).
    pub new_cgroupns: bool,
    /// The container's cgroup, when the child moves itself into it first thing
    /// (`CgroupManager::join_self`: on v1 that skips the ~10 ms RCU wait of moving
    /// another process). `None`: the parent adds us before "go".
    pub join_cgroup: Option<Box<dyn virtkit_cgroups::CgroupManager>>,
    /// Where to wait for the parent's "go" (after which we join `join_cgroup` and
    /// make the new cgroup namespace).
    pub go_at: GoAt,
    /// Create: stop for the "hooks" exchange (some prestart, createRuntime or
    /// createContainer hook exists).
    pub hooks_msg: bool,
    /// Create or exec.
    pub mode: Mode,
    /// The sealed exec DMZ to exec the container process through (`run` without the
    /// re-exec; see `crate::dmz`).
    pub dmz: Option<OwnedFd>,
    /// I/O priority, scheduler, CPU affinity, memory policy and personality.
    pub placement: Placement,
    /// AppArmor profile for the execve.
    pub lsm: Lsm,
    /// The name of a new session keyring to join (`_ses.<id>`), unless runc's
    /// `--no-new-keyring` (then the runtime's is inherited).
    pub session_keyring: Option<String>,
    /// Without a mount namespace of its own: the directory to `chroot` into (create: the
    /// rootfs, in place of the whole mount set-up and pivot; exec: the container init's
    /// root). No mount is made.
    pub chroot: Option<OwnedFd>,
}

/// `chroot` into the directory `root` (an `O_PATH` descriptor) and `chdir("/")`.
fn chroot_into(sys: &LinuxSyscalls, root: &OwnedFd) -> Result<()> {
    use std::os::fd::AsFd;
    let slash = std::path::Path::new("/");
    sys.fchdir(root.as_fd())
        .context("enter the container root")?;
    sys.chroot(std::path::Path::new("."))
        .context("chroot into the container root")?;
    sys.chdir(slash)
        .context("chdir to / in the container root")?;
    Ok(())
}

/// Joins a new session keyring named `name` (as runc does for each container, so its
/// processes do not share the runtime's keys). A kernel without keyrings is no error.
fn join_session_keyring(name: &str) -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    let c = CString::new(name)?;
    // SAFETY: keyctl(JOIN_SESSION_KEYRING) reads one NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, c.as_ptr()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e).with_context(|| format!("join session keyring {name}"));
        }
    }
    Ok(())
}

/// The child's entry point; never returns.
pub fn child(init: &Init) -> ! {
    let e = match run(init) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let msg = format!("E{}", crate::error::chain(&e));
    if send_msg(init.sync, msg.as_bytes()).is_err() {
        // The parent is gone (after `start`): stderr is all we have.
        raw_stderr(&format!(
            "container-runner init: {}\n",
            crate::error::chain(&e)
        ));
    }
    // SAFETY: _exit ends this process without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

fn expect_go(sync: RawFd) -> Result<()> {
    let m = recv_msg(sync).context("read from parent")?;
    if m != b"go" {
        // The parent died or gave up.
        // SAFETY: _exit ends this process at once.
        unsafe { libc::_exit(1) }
    }
    Ok(())
}

fn setup_console(console: RawFd, size: Option<(u16, u16)>) -> Result<()> {
    let ptmx = CString::new("/dev/ptmx")?;
    // SAFETY: standard pty calls on fds we own; buffers are valid and sized.
    unsafe {
        let master = libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if master < 0 {
            bail!("open /dev/ptmx: {}", std::io::Error::last_os_error());
        }
        if libc::unlockpt(master) < 0 {
            bail!("unlockpt: {}", std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0 {
            bail!("ptsname: {}", std::io::Error::last_os_error());
        }
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            bail!("open pty slave: {}", std::io::Error::last_os_error());
        }
        if let Some((rows, cols)) = size {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            libc::ioctl(slave, libc::TIOCSWINSZ, &ws);
        }
        let pname = std::ffi::CStr::from_ptr(name.as_ptr()).to_bytes();
        send_fd(console, master, pname).context("send pty master to console socket")?;
        libc::close(master);
        libc::close(console);
        if libc::setsid() < 0 {
            bail!("setsid: {}", std::io::Error::last_os_error());
        }
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
            bail!("TIOCSCTTY: {}", std::io::Error::last_os_error());
        }
        for fd in 0..3 {
            if libc::dup2(slave, fd) < 0 {
                bail!("dup2 pty: {}", std::io::Error::last_os_error());
            }
        }
        if slave > 2 {
            libc::close(slave);
        }
    }
    Ok(())
}

fn write_sysctl(sysctl: &[(String, String)]) -> Result<()> {
    for (k, v) in sysctl {
        // Checked by create already (crate::sysctl::check); again here, where the path
        // is made.
        if !crate::sysctl::plain_name(k) {
            bail!("invalid sysctl key {k:?}");
        }
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).with_context(|| format!("sysctl {k}={v}"))?;
    }
    Ok(())
}

/// After the parent's "go": into the container's cgroup (when we move ourselves), then
/// the new cgroup namespace, rooted at that cgroup.
fn enter_cgroup(i: &Init, sys: &LinuxSyscalls) -> Result<()> {
    if let Some(cg) = &i.join_cgroup {
        // Single-threaded here (a fork of a single-threaded runtime), as join_self needs.
        cg.join_self()
            .with_context(|| format!("join cgroup {}", cg.path()))?;
    }
    if i.new_cgroupns {
        sys.unshare(libc::CLONE_NEWCGROUP)
            .context("create the cgroup namespace")?;
    }
    Ok(())
}

fn run(i: &Init) -> Result<Infallible> {
    // Until "ready", die with the parent so a killed `create` leaves nothing behind.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // Before the move into the container's cgroup.
    i.placement.apply_initial()?;
    let sys = LinuxSyscalls;
    if i.go_at == GoAt::Start {
        expect_go(i.sync)?;
        enter_cgroup(i, &sys)?;
    } else {
        // The parent may have died before PR_SET_PDEATHSIG took effect: then its end of
        // the sync socket is closed. (getppid() cannot tell: it is 0 in a new pid
        // namespace.)
        let mut pfd = libc::pollfd {
            fd: i.sync,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            // SAFETY: _exit ends this process at once.
            unsafe { libc::_exit(1) }
        }
    }
    for (kind, fd) in &i.joins {
        use std::os::fd::AsFd;
        sys.setns(fd.as_fd(), kind.clone_flag())
            .with_context(|| format!("join {} namespace", kind.proc_name()))?;
    }
    if i.userns {
        // After clone(CLONE_NEWUSER) we are the overflow uid until we switch to ids
        // mapped in the new namespace (files we create would otherwise fail EOVERFLOW).
        // SAFETY: plain id syscalls.
        unsafe {
            if libc::setresgid(0, 0, 0) < 0 || libc::setresuid(0, 0, 0) < 0 {
                bail!(
                    "become root in the user namespace (are uid/gid 0 mapped?): {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    if let Some(name) = &i.session_keyring {
        join_session_keyring(name)?;
    }
    i.plan.apply_early()?;
    let mut state_for_start = Vec::new();
    // In a chroot, our fd table in the caller's /proc (the rootfs may have no /proc), to
    // reopen the exec fifo through.
    let mut fd_dir = None;
    if let Mode::Create {
        rootfs,
        hostname,
        domainname,
        sysctl,
        create_container,
        state_json,
        ..
    } = &i.mode
    {
        if let Some(h) = hostname {
            sys.sethostname(h).context("set hostname")?;
        }
        if let Some(d) = domainname {
            sys.setdomainname(d).context("set domainname")?;
        }
        if i.chroot.is_none() {
            prepare_rootfs_start(&sys, rootfs)?;
        }
        let mounts = &rootfs.mounts;
        for k in 0..=mounts.len() {
            if i.go_at == GoAt::BeforeMount(k) {
                expect_go(i.sync)?;
                enter_cgroup(i, &sys)?;
            }
            if let Some(m) = mounts.get(k) {
                mount_in_root(&sys, &rootfs.rootfs, m)?;
            }
        }
        create_devices(&sys, rootfs)?;
        if i.hooks_msg {
            send_msg(i.sync, b"hooks")?;
            // "go" followed by the state JSON with our host pid, for the container hooks.
            let m = recv_msg(i.sync).context("read from parent")?;
            let Some(state) = m.strip_prefix(b"go") else {
                // SAFETY: _exit ends this process at once.
                unsafe { libc::_exit(1) }
            };
            let state = if state.is_empty() {
                state_json.as_slice()
            } else {
                state
            };
            crate::hooks::run("createContainer", create_container, state)?;
            state_for_start = state.to_vec();
        } else {
            state_for_start = state_json.clone();
        }
        match &i.chroot {
            None => {
                pivot(&sys, rootfs)?;
                write_sysctl(sysctl)?;
                finalize_rootfs(&sys, rootfs)?;
            }
            // Through the caller's /proc (its /proc/sys follows our namespaces): the
            // rootfs may have no /proc.
            Some(root) => {
                write_sysctl(sysctl)?;
                fd_dir = Some(sys.open_dir(Path::new("/proc/self/fd"))?);
                chroot_into(&sys, root)?;
            }
        }
    } else if let Some(root) = &i.chroot {
        chroot_into(&sys, root)?;
    }
    if i.plan.terminal {
        let c = i
            .console
            .context("process.terminal is true but no --console-socket was given")?;
        setup_console(c, i.plan.console_size)?;
    }
    cloexec_from(3 + i.preserve_fds)?;
    i.plan.enter_cwd()?;
    let exe = i.plan.resolve_exe()?;
    // While we still have the capabilities a real-time class or policy may need.
    i.placement.apply_privileged()?;
    if let Some(listener) = i.plan.apply_identity()? {
        // The runtime hands it to linux.seccomp.listenerPath.
        send_fd(i.sync, listener.as_raw_fd(), b"seccomp").context("send the seccomp listener")?;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    send_msg(i.sync, b"ready")?;
    if let Mode::Create {
        fifo,
        start_container,
        ..
    } = &i.mode
    {
        if let Some(fifo) = fifo {
            // Blocks until `start` opens the fifo for reading.
            let flags = libc::O_WRONLY | libc::O_CLOEXEC;
            let w = match &fd_dir {
                Some(dir) => {
                    let name = CString::new(fifo.to_string())?;
                    // SAFETY: a valid directory fd and name; the returned fd is ours.
                    unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) }
                }
                None => {
                    let p = CString::new(format!("/proc/self/fd/{fifo}"))?;
                    // SAFETY: valid path; the returned fd is ours.
                    unsafe { libc::open(p.as_ptr(), flags) }
                }
            };
            if w < 0 {
                bail!("open exec fifo: {}", std::io::Error::last_os_error());
            }
            // SAFETY: writes one byte from a valid buffer; closes fds we own.
            unsafe {
                if libc::write(w, b"0".as_ptr().cast(), 1) != 1 {
                    bail!("write exec fifo: {}", std::io::Error::last_os_error());
                }
                libc::close(w);
                libc::close(*fifo);
            }
        }
        // Under `run` (no fifo) "ready" is the start: on to execve.
        // A startContainer hook without `env` gets the container process's (as runc).
        crate::hooks::run_with_env(
            "startContainer",
            start_container,
            &state_for_start,
            &i.plan.env,
        )?;
    }
    i.placement.apply_final()?;
    i.lsm.apply()?;
    let _ = i.sync.as_raw_fd();
    match &i.dmz {
        Some(dmz) => Err(i.plan.exec_via_dmz(dmz, &exe)),
        None => Err(i.plan.exec(&exe)),
    }
}
