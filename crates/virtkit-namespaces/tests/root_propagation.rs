//! Mount propagation on a host whose `/` is shared (issue #14, item 2). Needs root and
//! /bin/busybox (package busybox-static).
//!
//! Every systemd host (and any host after dockerd or podman ran) has a shared `/`; a fresh
//! Debian machine without systemd has a private one. Each test makes its own "host": a
//! mount namespace whose `/` is a slave of the real one (nothing reaches the real host)
//! and then shared again, as on a systemd host. A "container" made from it sets up a
//! rootfs with each `rootfsPropagation`; afterwards the host's mount table must not hold
//! a single mount under the rootfs, and the container must have pivoted.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use virtkit_namespaces::namespace::{self, NamespaceType};
use virtkit_namespaces::rootfs::{propagation_flags, setup_rootfs, MountSpec, RootfsConfig};
use virtkit_namespaces::{mountinfo, LinuxSyscalls, Syscalls};

mod common;
use common::{busybox_rootfs, exec_sh, raw, require_root_and_busybox};

/// Waits for `pid`; its exit code (128 when killed).
fn wait(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    // SAFETY: waits for our own child; `st` is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128
    }
}

/// The mount points under `dir` in this process's mount namespace.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo::parse(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// What one run on a shared host is made of.
struct HostRun {
    /// A shell command the host runs first (say, to make a volume a mount of its own).
    prep: Option<CString>,
    /// The container's rootfs and the `rootfsPropagation` it is set up with.
    rootfs: PathBuf,
    propagation: u64,
    /// The host directory bound at `/vol`.
    vol: PathBuf,
    /// What the container's shell runs.
    script: String,
    /// A host directory whose mounts are listed after the container ended (`back: [..]`).
    watch: Option<PathBuf>,
}

/// Runs `run` in a "host" namespace with a shared `/`. Returns (exit code, stdout,
/// stderr); stdout ends with `leaked: [..]` (the host's mounts under the rootfs) and, with
/// `watch`, `back: [..]`.
/// One test at a time: each forks children, and a child of one inherits the other's
/// short-lived write fds (see `busybox_rootfs`).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn on_shared_host(run: HostRun) -> (i32, String, String) {
    let mut cmd = Command::new("/bin/true");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec; glibc makes malloc usable in the
    // child, and the forked processes end with _exit, never returning to the harness.
    unsafe {
        cmd.pre_exec(move || {
            let sys = LinuxSyscalls;
            let slash = Path::new("/");
            // The host: its own mount namespace, cut off from the real host's (slave),
            // then shared as on a systemd host.
            sys.unshare(libc::CLONE_NEWNS)
                .map_err(std::io::Error::other)?;
            for flags in [libc::MS_SLAVE, libc::MS_SHARED] {
                sys.mount(None, slash, None, flags | libc::MS_REC, None)
                    .map_err(std::io::Error::other)?;
            }
            if let Some(prep) = &run.prep {
                if libc::system(prep.as_ptr()) != 0 {
                    raw(2, "the host's preparation failed\n");
                    libc::_exit(80);
                }
            }
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(container(&run));
            }
            let code = wait(pid);
            raw(1, &format!("\nleaked: {:?}\n", mounts_under(&run.rootfs)));
            if let Some(w) = &run.watch {
                raw(1, &format!("back: {:?}\n", mounts_under(w)));
            }
            libc::_exit(code);
        });
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The container: new mount and PID namespaces, the rootfs set up (proc, a tmpfs, the
/// volume, pivot) with the run's propagation, then its script run by the rootfs's shell.
fn container(run: &HostRun) -> i32 {
    let sys = LinuxSyscalls;
    if let Err(e) = namespace::unshare(&sys, &[NamespaceType::Mount, NamespaceType::Pid]) {
        raw(2, &format!("{e}\n"));
        return 90;
    }
    // SAFETY: fork in a single-threaded child; the grandchild ends with _exit or exec.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return wait(pid);
    }
    let mut cfg = RootfsConfig::new(&run.rootfs);
    cfg.propagation = run.propagation;
    cfg.devices.clear();
    cfg.dev_symlinks = false;
    let m = |src: &Path, dest: &str, t: Option<&str>, o: &[&str]| MountSpec {
        source: Some(src.to_path_buf()),
        destination: PathBuf::from(dest),
        fstype: t.map(str::to_string),
        options: o.iter().map(|s| s.to_string()).collect(),
    };
    cfg.mounts = vec![
        m(Path::new("proc"), "/proc", Some("proc"), &[]),
        m(Path::new("tmpfs"), "/tmp", Some("tmpfs"), &[]),
        m(&run.vol, "/vol", Some("bind"), &["rbind"]),
    ];
    let code = match setup_rootfs(&sys, &cfg) {
        Ok(()) => exec_sh(&run.script),
        Err(e) => {
            let mut msg = format!("setup_rootfs: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            raw(2, &format!("{msg}\n"));
            91
        }
    };
    // SAFETY: ends the grandchild.
    unsafe { libc::_exit(code) }
}

#[test]
fn root_every_rootfs_propagation_on_a_shared_host_pivots_and_leaks_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_busybox();
    for prop in [
        "rslave",
        "slave",
        "rprivate",
        "private",
        "rshared",
        "shared",
        "runbindable",
        "unbindable",
    ] {
        let rootfs = busybox_rootfs();
        std::fs::create_dir(rootfs.path().join("vol")).unwrap();
        std::fs::write(rootfs.path().join("marker"), "inside").unwrap();
        let vol = tempfile::tempdir().unwrap();
        std::fs::write(vol.path().join("v"), "volume").unwrap();
        let (code, out, err) = on_shared_host(HostRun {
            prep: None,
            rootfs: rootfs.path().canonicalize().unwrap(),
            propagation: propagation_flags(prop).unwrap(),
            vol: vol.path().canonicalize().unwrap(),
            script: "cat /marker; echo; cat /vol/v; echo; cat /proc/1/cmdline | tr '\\0' ' '"
                .into(),
            watch: None,
        });
        assert_eq!(code, 0, "{prop}: stdout: {out}\nstderr: {err}");
        assert!(out.contains("leaked: []"), "{prop}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"inside"),
            "{prop}: not in the rootfs: {out}"
        );
        assert_eq!(lines.get(1), Some(&"volume"), "{prop}: {out}");
        assert!(
            lines.get(2).is_some_and(|l| l.starts_with("/bin/sh")),
            "{prop}: not PID 1 of its namespace: {out}"
        );
    }
}

#[test]
fn root_rshared_volume_propagates_back_to_the_host_but_the_setup_does_not() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Docker's `-v src:dst:rshared`: a mount made inside the container under the volume
    // shows on the host under the volume's source; nothing else from the container does.
    require_root_and_busybox();
    let rootfs = busybox_rootfs();
    std::fs::create_dir(rootfs.path().join("vol")).unwrap();
    let vol = tempfile::tempdir().unwrap();
    let volc = vol.path().canonicalize().unwrap();
    std::fs::create_dir(volc.join("sub")).unwrap();
    // The volume is a mount of its own on the host, in the peer group of `/`.
    let prep = format!("mount --bind {v} {v}", v = volc.display());
    let (code, out, err) = on_shared_host(HostRun {
        prep: Some(CString::new(prep).unwrap()),
        rootfs: rootfs.path().canonicalize().unwrap(),
        propagation: libc::MS_SHARED | libc::MS_REC,
        vol: volc.clone(),
        script: "mount -t tmpfs inner /vol/sub && echo mounted".into(),
        watch: Some(volc.join("sub")),
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("mounted"), "{out}");
    assert!(
        out.contains("leaked: []"),
        "the container's set-up reached the host: {out}"
    );
    // The host sees it under the volume (once per mount of its peer group there).
    let sub = format!("{:?}", volc.join("sub"));
    let back = out
        .lines()
        .find_map(|l| l.strip_prefix("back: ["))
        .unwrap_or("]");
    assert!(
        back.starts_with(&sub),
        "the mount under the rshared volume did not come back to the host: {out}"
    );
}
