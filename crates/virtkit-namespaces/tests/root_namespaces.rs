//! Real namespace and rootfs tests. They need root and /bin/busybox (package
//! busybox-static); they fail with a clear message when either is missing.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use virtkit_namespaces::namespace::{self, NamespaceType};
use virtkit_namespaces::rootfs::{
    default_devices, prepare_rootfs, setup_rootfs, MountSpec, RootfsConfig,
};
use virtkit_namespaces::{LinuxSyscalls, Syscalls};

mod common;
use common::{busybox_rootfs, exec_sh, raw, require_root_and_busybox};

static SERIAL: Mutex<()> = Mutex::new(());

fn mounts() -> Vec<MountSpec> {
    let m = |src: &str, dest: &str, t: &str, o: &[&str]| MountSpec {
        source: Some(PathBuf::from(src)),
        destination: PathBuf::from(dest),
        fstype: Some(t.into()),
        options: o.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        m("proc", "/proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "tmpfs",
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        m(
            "shm",
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "mqueue",
            "/dev/mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "sysfs",
            "/sys",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
}

/// Runs `child` in a grandchild that is pid 1 of new mount, pid, uts, ipc and net
/// namespaces; returns (exit code, stdout, stderr).
fn in_namespaces(child: impl Fn() -> i32 + Send + Sync + 'static) -> (i32, String, String) {
    let mut cmd = Command::new("/bin/true");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec; glibc makes malloc usable in the
    // child and we never return into the test harness from the grandchild.
    unsafe {
        cmd.pre_exec(move || {
            let sys = LinuxSyscalls;
            namespace::unshare(
                &sys,
                &[
                    NamespaceType::Mount,
                    NamespaceType::Pid,
                    NamespaceType::Uts,
                    NamespaceType::Ipc,
                    NamespaceType::Net,
                ],
            )
            .map_err(std::io::Error::other)?;
            // The tests mount straight onto paths of the caller's tree: keep those mounts
            // in this namespace on a host whose `/` is shared (every systemd host).
            sys.mount(
                None,
                Path::new("/"),
                None,
                libc::MS_SLAVE | libc::MS_REC,
                None,
            )
            .map_err(std::io::Error::other)?;
            let pid = libc::fork();
            if pid == 0 {
                let code = child();
                libc::_exit(code);
            }
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            libc::_exit(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128
            });
        });
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn root_container_sees_own_hostname_pid1_empty_net_and_pivoted_root() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_busybox();
    let rootfs = busybox_rootfs();
    std::fs::write(rootfs.path().join("marker"), "inside").unwrap();
    let root = rootfs.path().to_path_buf();
    let (code, out, err) = in_namespaces(move || {
        let sys = LinuxSyscalls;
        let mut cfg = RootfsConfig::new(&root);
        cfg.mounts = mounts();
        cfg.devices = default_devices();
        cfg.masked_paths = vec![
            "/proc/kcore".into(),
            "/proc/scsi".into(),
            "/proc/acpi".into(),
        ];
        cfg.readonly_paths = vec!["/proc/sys".into()];
        if let Err(e) = namespace::set_hostname(&sys, "vk-test-host") {
            raw(2, &format!("{e}\n"));
            return 90;
        }
        if let Err(e) = setup_rootfs(&sys, &cfg) {
            raw(2, &format!("{e}\n"));
            return 91;
        }
        exec_sh(
            "echo host=$(hostname); echo pid=$$; echo net=$(ls /sys/class/net); \
             echo marker=$(cat /marker); echo kcore=$(cat /proc/kcore | wc -c); \
             echo acpi=$(ls /proc/acpi | wc -l); \
             if echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null; then echo sys=rw; else echo sys=ro; fi; \
             echo null=$(ls -l /dev/null | cut -c1); echo ptmx=$(ls /dev/pts/ptmx); \
             if touch /dev/shm/x; then echo shm=ok; fi",
        )
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let has = |l: &str| out.lines().any(|x| x.trim() == l);
    assert!(has("host=vk-test-host"), "{out}");
    assert!(has("pid=1"), "{out}");
    assert!(has("net=lo"), "{out}");
    assert!(has("marker=inside"), "{out}");
    assert!(has("kcore=0"), "{out}");
    assert!(has("acpi=0") || !Path::new("/proc/acpi").exists(), "{out}");
    assert!(has("sys=ro"), "{out}");
    assert!(has("ptmx=/dev/pts/ptmx"), "{out}");
    assert!(has("shm=ok"), "{out}");
    // The host kept its own hostname.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "vk-test-host");
}

#[test]
fn root_symlink_escapes_stay_in_the_rootfs_and_proc_over_a_symlink_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_busybox();
    let rootfs = busybox_rootfs();
    std::fs::remove_dir(rootfs.path().join("proc")).unwrap();
    std::os::unix::fs::symlink("/", rootfs.path().join("proc")).unwrap();
    // A relative escape too.
    std::os::unix::fs::symlink("../../../../../../../tmp", rootfs.path().join("escape")).unwrap();
    let root = rootfs.path().to_path_buf();
    let (code, out, err) = in_namespaces(move || {
        let sys = LinuxSyscalls;
        let mut cfg = RootfsConfig::new(&root);
        cfg.mounts = vec![MountSpec {
            source: Some("tmpfs".into()),
            destination: "/escape/x".into(),
            fstype: Some("tmpfs".into()),
            options: vec![],
        }];
        cfg.devices.clear();
        cfg.dev_symlinks = false;
        if let Err(e) = prepare_rootfs(&sys, &cfg) {
            raw(2, &format!("{e}\n"));
            return 91;
        }
        // Print every mount point of this mount namespace.
        match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(s) => {
                for l in s.lines() {
                    let f: Vec<&str> = l.split(' ').collect();
                    let sep = f.iter().position(|x| *x == "-").unwrap_or(0);
                    raw(1, &format!("{} {}\n", f[4], f.get(sep + 1).unwrap_or(&"?")));
                }
                0
            }
            Err(e) => {
                raw(2, &format!("{e}\n"));
                92
            }
        }
    });
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let root = rootfs.path().canonicalize().unwrap();
    let points: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    assert!(
        !points.iter().any(|(p, _)| *p == "/tmp/x"),
        "tmpfs escaped to the host's /tmp: {out}"
    );
    let r = root.display().to_string();
    assert!(
        points
            .iter()
            .any(|(p, t)| *p == format!("{r}/tmp/x") && *t == "tmpfs"),
        "the relative escape should stay in the rootfs: {out}"
    );
    // procfs through the image's `/proc -> /` symlink: refused, as runc does (before,
    // it was resolved inside the root; runc will not mount procfs through any link).
    let root = rootfs.path().to_path_buf();
    let (code, _out, err) = in_namespaces(move || {
        let mut cfg = RootfsConfig::new(&root);
        cfg.mounts = vec![MountSpec {
            source: Some("proc".into()),
            destination: "/proc".into(),
            fstype: Some("proc".into()),
            options: vec![],
        }];
        cfg.devices.clear();
        cfg.dev_symlinks = false;
        match prepare_rootfs(&LinuxSyscalls, &cfg) {
            Err(e) => {
                raw(2, &format!("{e}\n"));
                91
            }
            Ok(()) => 0,
        }
    });
    assert_eq!(code, 91, "proc over a symlink was mounted: {err}");
    assert!(err.contains("ordinary directory"), "{err}");
}

#[test]
fn root_join_namespace_by_path() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_busybox();
    // A process in a new UTS namespace; a second one joins it by path and sees its name.
    let mut holder = Command::new("/bin/busybox");
    holder.args(["sleep", "30"]);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        holder.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = b"joined-uts";
            if libc::sethostname(n.as_ptr().cast(), n.len()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = holder.spawn().unwrap();
    let path = PathBuf::from(format!("/proc/{}/ns/uts", holder.id()));
    // Wait until the holder has exec'd (its uts ns differs from ours).
    for _ in 0..200 {
        if std::fs::read_link(&path).ok() != std::fs::read_link("/proc/self/ns/uts").ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut cmd = Command::new("/bin/busybox");
    cmd.arg("hostname");
    // SAFETY: the closure opens a file and calls setns; glibc malloc is fork-safe.
    unsafe {
        cmd.pre_exec(move || {
            namespace::join(&LinuxSyscalls, &path, Some(NamespaceType::Uts))
                .map_err(std::io::Error::other)
        });
    }
    let out = cmd.output().unwrap();
    holder.kill().ok();
    holder.wait().ok();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "joined-uts");
}

#[test]
fn root_resolve_in_root_follows_mounts_over_the_root() {
    // resolve_in_root keeps the root's fd between calls: a mount over the root path, or
    // over the root through a resolved target, must be seen by the next resolution.
    use virtkit_namespaces::syscalls::TargetKind;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_busybox();
    let rootfs = busybox_rootfs();
    let root = rootfs.path().to_path_buf();
    let (code, out, err) = in_namespaces(move || {
        let sys = LinuxSyscalls;
        let step = |what: &str, r: Result<(), String>| {
            if let Err(e) = r {
                raw(2, &format!("{what}: {e}\n"));
                return false;
            }
            true
        };
        let tmpfs = |target: &Path| {
            sys.mount(Some(Path::new("tmpfs")), target, Some("tmpfs"), 0, None)
                .map_err(|e| e.to_string())
        };
        let resolve = |p: &str| {
            sys.resolve_in_root(&root, Path::new(p), TargetKind::Dir)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        // Cached root; then a tmpfs over the root path itself.
        let ok = step("resolve a", resolve("/a"))
            && step("tmpfs over the root path", tmpfs(&root))
            && step("resolve b", resolve("/b"));
        if !ok {
            return 1;
        }
        // Then a tmpfs over the root through its resolved target ("/").
        let over = match sys.resolve_in_root(&root, Path::new("/"), TargetKind::Dir) {
            Ok(t) => tmpfs(t.path()),
            Err(e) => Err(e.to_string()),
        };
        if !(step("tmpfs over /", over) && step("resolve c", resolve("/c"))) {
            return 2;
        }
        let seen: Vec<String> = ["a", "b", "c"]
            .iter()
            .filter(|n| root.join(n).exists())
            .map(|n| n.to_string())
            .collect();
        raw(1, &seen.join(","));
        0
    });
    assert_eq!(code, 0, "{err}");
    // Each name was made on the mount on top when it was made: only the last is visible.
    assert_eq!(out, "c");
    assert!(
        rootfs.path().join("a").exists(),
        "a is on the original directory"
    );
    assert!(!rootfs.path().join("b").exists());
}
