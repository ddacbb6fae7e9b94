//! Shared helpers for container-runner's root tests: a busybox bundle and a runner.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Root tests share cgroups, /run and mounts: run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn require_root_and_busybox() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "root_ tests must run as root");
    assert!(
        Path::new("/bin/busybox").exists(),
        "root_ tests need /bin/busybox: apt-get install busybox-static"
    );
}

pub const BIN: &str = env!("CARGO_BIN_EXE_container-runner");

/// A bundle (config.json + busybox rootfs) and a private state root.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub state_root: PathBuf,
}

pub fn busybox_rootfs(r: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for app in String::from_utf8_lossy(&list.stdout).lines() {
        if app != "busybox" && !app.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", r.join("bin").join(app));
        }
    }
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
}

/// A busybox root filesystem as a tar file in `dir` (`busybox.tar`), for `podman import`
/// and `docker import`.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("img-rootfs");
    busybox_rootfs(&rootfs);
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

impl Bundle {
    /// A bundle whose config.json comes from `container-runner spec`, with `args`,
    /// no terminal, and `edit` applied to the JSON.
    pub fn new(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs(&dir.path().join("rootfs"));
        let out = Command::new(BIN)
            .args(["spec", "-b"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "spec: {out:?}");
        let cfg_path = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = args.iter().map(|s| s.to_string()).collect();
        edit(&mut cfg);
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let state_root = dir.path().join("state");
        Bundle { dir, state_root }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs container-runner with `--root <state>` and `args`. Output goes through files,
    /// not pipes: a created container's init keeps its stdio open, as with runc.
    pub fn rt(&self, args: &[&str]) -> Output {
        self.rt_with(BIN, &self.state_root, args)
    }

    /// Runs the runtime `bin` (container-runner, or `runc` as a control) with
    /// `--root state_root` and `args`, as [`Bundle::rt`] does.
    pub fn rt_with(&self, bin: &str, state_root: &Path, args: &[&str]) -> Output {
        let (out_p, err_p) = (self.path().join(".rt.out"), self.path().join(".rt.err"));
        let status = self
            .command(bin, state_root, args, &out_p, &err_p)
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(&out_p).unwrap(),
            stderr: std::fs::read(&err_p).unwrap(),
        }
    }

    /// The command line of [`Bundle::rt_with`], its stdout and stderr going to fresh
    /// files `out` and `err` (a created container keeps the previous ones open).
    pub fn command(
        &self,
        bin: &str,
        state_root: &Path,
        args: &[&str],
        out: &Path,
        err: &Path,
    ) -> Command {
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        let mut cmd = Command::new(bin);
        cmd.arg("--root")
            .arg(state_root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(err).unwrap());
        cmd
    }

    /// Like [`rt`] but asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.rt(args);
        assert!(
            o.status.success(),
            "container-runner {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn create(&self, id: &str) {
        let b = self.path().to_str().unwrap().to_string();
        self.ok(&["create", "--bundle", &b, id]);
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits up to `secs` for the status to become `want`.
    pub fn wait_status(&self, id: &str, want: &str, secs: u64) {
        let t0 = std::time::Instant::now();
        loop {
            let s = self.status(id);
            if s == want {
                return;
            }
            assert!(
                t0.elapsed().as_secs() < secs,
                "{id}: status {s}, wanted {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Best effort: never leave containers behind after a failed assertion.
        if let Ok(rd) = std::fs::read_dir(&self.state_root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.rt(&["delete", "--force", &id]);
            }
        }
    }
}

/// The v1 cgroup directory of `controller` for `virtkit/<id>` on this host.
pub fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/{controller}/virtkit/{id}"))
}

/// Whether any mount in our mount namespace sits under `path`.
pub fn mounted_under(path: &Path) -> bool {
    let p = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&p)))
}

/// Makes `cmd` run in a mount namespace of its own whose `/` is a slave of the caller's
/// (nothing it mounts reaches the caller), made shared again when `shared` (a host whose
/// `/` is shared, as every systemd host, without touching the real one).
pub fn in_slave_mount_namespace(cmd: &mut Command, shared: bool) -> &mut Command {
    // SAFETY: only unshare and mount between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let slash = c"/";
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // No allocation after fork: a fixed list, cut to length.
            let steps = [
                libc::MS_SLAVE | libc::MS_REC,
                libc::MS_SHARED | libc::MS_REC,
            ];
            for &flags in &steps[..1 + usize::from(shared)] {
                let r = libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                );
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}
