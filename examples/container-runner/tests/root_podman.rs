//! podman drives container-runner (`podman --runtime <path>`), with runc as the control:
//! the same steps must pass with both. Needs root, busybox-static and podman (installed
//! here with apt-get when missing).
//!
//! Host notes: podman 4.3's default rlimits (nofile/nproc 1048576) are above this host's
//! hard limits and the runtime lacks CAP_SYS_RESOURCE, so every run passes
//! `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`; networking uses `--network none`
//! (no netavark/slirp in CI); storage is a private vfs store in a temp dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn ensure_podman() {
    let have = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return;
    }
    let st = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "podman",
            "conmon",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .unwrap();
    assert!(
        st.success(),
        "podman is missing and `apt-get install podman conmon` failed"
    );
}

fn which(name: &str) -> PathBuf {
    let o = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(!p.is_empty(), "{name} not found (apt-get install {name})");
    PathBuf::from(p)
}

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tar = busybox_tar(dir.path());
        let p = Podman { dir };
        let o = p.cmd(
            &which("runc"),
            &[
                "import",
                tar.to_str().unwrap(),
                "localhost/vk-busybox:latest",
            ],
        );
        assert!(
            o.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        p
    }

    fn cmd(&self, runtime: &Path, args: &[&str]) -> Output {
        let d = self.dir.path();
        Command::new("podman")
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(runtime)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, runtime: &Path, args: &[&str]) -> String {
        let o = self.cmd(runtime, args);
        assert!(
            o.status.success(),
            "[{}] podman {args:?}: {}\n{}",
            runtime.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

const LIMITS: [&str; 6] = [
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn podman_steps(p: &Podman, rt: &Path, tag: &str) {
    let img = "localhost/vk-busybox:latest";
    // run --rm
    let mut a = vec!["run", "--rm"];
    a.extend(LIMITS);
    a.extend([img, "sh", "-c", "echo hello-$((6*7)) $(hostname | wc -c)"]);
    let out = p.ok(rt, &a);
    assert!(out.starts_with("hello-42 "), "[{tag}] {out}");

    // run -d with --memory, exec, stop, rm
    let name = format!("vk-pod-{tag}");
    let mut a = vec!["run", "-d", "--name", &name, "--memory", "64m"];
    a.extend(LIMITS);
    a.extend([img, "sleep", "1000"]);
    p.ok(rt, &a);
    let out = p.ok(
        rt,
        &[
            "exec",
            &name,
            "sh",
            "-c",
            "echo exec-ok; cat /proc/1/cmdline",
        ],
    );
    assert!(out.starts_with("exec-ok\nsleep"), "[{tag}] {out}");
    let pid: i32 = p
        .ok(rt, &["inspect", &name, "--format", "{{.State.Pid}}"])
        .trim()
        .parse()
        .unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem = cg.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
        ctls.split(',').any(|c| c == "memory").then_some(path)
    });
    let mem = mem.unwrap_or_else(|| panic!("[{tag}] no memory cgroup in {cg}"));
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes"))
            .unwrap();
    assert_eq!(limit.trim(), "67108864", "[{tag}]");
    p.ok(rt, &["stop", "-t", "1", &name]);
    p.ok(rt, &["rm", &name]);
    assert_eq!(
        p.ok(rt, &["ps", "-a", "-q"]).trim(),
        "",
        "[{tag}] containers left"
    );

    // --memory is enforced: 64 MiB in a shell variable under 16 MiB is OOM-killed.
    let mut a = vec!["run", "--rm", "--memory", "16m"];
    a.extend(LIMITS);
    a.extend([
        img,
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
    ]);
    let o = p.cmd(rt, &a);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("survived"),
        "[{tag}] {o:?}"
    );
    assert_eq!(o.status.code(), Some(137), "[{tag}] {o:?}");
}

#[test]
fn root_podman_drives_container_runner_and_runc() {
    let _g = lock();
    require_root_and_busybox();
    ensure_podman();
    let p = Podman::new();
    // Control first: if runc fails, the host (not our runtime) is at fault.
    podman_steps(&p, &which("runc"), "runc");
    podman_steps(&p, Path::new(BIN), "container-runner");
}
