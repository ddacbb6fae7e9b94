//! `vm-runner --jail`: root tests (`root_kvm_`, they need root and /dev/kvm). The VMM runs
//! in its own namespaces, root and cgroup as an unprivileged user with no capabilities
//! and its seccomp filters; nothing is left after it ends or after kill -9.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const POWEROFF: [u8; 8] = [0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4];
const SPIN: [u8; 2] = [0xeb, 0xfe];

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("vm-runner-jail-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn kernel(&self, code: &[u8]) -> PathBuf {
        let p = self.0.join("vmlinux");
        std::fs::write(&p, virtkit_boot::testing::tiny_elf(code)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn require_root() {
    // SAFETY: geteuid has no arguments.
    assert_eq!(unsafe { libc::geteuid() }, 0, "root tests need root");
}

fn runner(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vm-runner"));
    c.args(args).stdin(Stdio::null());
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn cgroup_procs(id: &str) -> Option<Vec<i32>> {
    let p = format!("/sys/fs/cgroup/pids/virtkit-jail/{id}/cgroup.procs");
    let p = if Path::new(&p).exists() {
        p
    } else {
        format!("/sys/fs/cgroup/virtkit-jail/{id}/cgroup.procs")
    };
    let text = std::fs::read_to_string(p).ok()?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn root_kvm_a_jailed_vm_powers_off_and_leaves_nothing() {
    require_root();
    let s = Scratch::new("off");
    let k = s.kernel(&POWEROFF);
    let disk = s.0.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let serial = s.0.join("serial.log");
    let root = s.0.join("root");
    let before = host_mounts();
    let o = runner(&[
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        &format!("path={}", disk.display()),
        "--serial",
        &format!("file:{}", serial.display()),
        "--jail",
        root.to_str().unwrap(),
        "--jail-id",
        "vk-test-off",
        "--jail-netns",
        "--jail-memory",
        "256",
        "--jail-cpus",
        "1",
        "--jail-pids",
        "64",
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("vm-runner: guest powered off"),
        "{}",
        stderr(&o)
    );
    assert!(!root.exists(), "the jail root is left");
    assert!(
        cgroup_procs("vk-test-off").is_none(),
        "the jail's cgroup is left"
    );
    assert_eq!(host_mounts(), before, "mounts leaked into the host");
}

fn api_ping(sock: &Path) -> String {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn root_kvm_the_jailed_vmm_is_unprivileged_filtered_and_alone_and_kill_9_leaves_nothing() {
    require_root();
    let s = Scratch::new("spin");
    let k = s.kernel(&SPIN);
    let root = s.0.join("root");
    let sock = root.join("api.sock");
    let before = host_mounts();
    let mut child = runner(&[
        "--kernel",
        k.to_str().unwrap(),
        "--serial",
        "none",
        "--api-socket",
        sock.to_str().unwrap(),
        "--jail",
        root.to_str().unwrap(),
        "--jail-id",
        "vk-test-spin",
        "--jail-netns",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let vmm = loop {
        if let Some(&pid) = cgroup_procs("vk-test-spin")
            .and_then(|p| p.first().copied())
            .as_ref()
        {
            if sock.exists() && status_field(pid, "Uid").starts_with("65534") {
                break pid;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the jailed VMM did not come up: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Identity, capabilities, no_new_privs and seccomp, as the host sees the process.
    assert!(status_field(vmm, "Uid")
        .split_whitespace()
        .all(|u| u == "65534"));
    assert!(status_field(vmm, "Gid")
        .split_whitespace()
        .all(|g| g == "65534"));
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(vmm, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(vmm, "NoNewPrivs"), "1");
    assert_eq!(status_field(vmm, "Seccomp"), "2");
    // Its own namespaces.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        assert_ne!(mine, its, "{ns} namespace shared with the host");
    }
    // Its root holds only what it was given.
    let mut seen: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    let top = k
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let mut want = vec!["api.sock".to_string(), "dev".into(), "proc".into(), top];
    want.sort();
    want.dedup();
    assert_eq!(seen, want);
    let net = std::fs::read_to_string(format!("/proc/{vmm}/net/dev")).unwrap();
    assert_eq!(net.lines().count(), 3, "interfaces beside lo: {net}");
    // The API answers through the socket in the jail's root.
    let ping = api_ping(&sock);
    assert!(ping.starts_with("HTTP/1.1 200"), "{ping}");
    // kill -9 of vm-runner (the supervisor): the VMM dies, and nothing is left.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cgroup_procs("vk-test-spin").is_some()
        || root.exists()
        || Path::new(&format!("/proc/{vmm}")).exists()
    {
        assert!(
            Instant::now() < deadline,
            "left after kill -9: cgroup {:?}, root {}",
            cgroup_procs("vk-test-spin"),
            root.exists()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_mounts(), before, "mounts leaked into the host");
}

#[test]
fn root_kvm_bad_jail_input_fails_before_anything_starts() {
    require_root();
    let s = Scratch::new("bad");
    let k = s.kernel(&POWEROFF);
    let kp = k.to_str().unwrap();
    let root = s.0.join("root");
    let rp = root.to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let o = runner(args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "expected {needle:?}: {}",
            stderr(&o)
        );
        assert!(!root.exists() || std::fs::read_dir(&root).unwrap().count() > 0);
    };
    fails(
        &[
            "--kernel",
            kp,
            "--memory",
            "512",
            "--jail",
            rp,
            "--jail-memory",
            "256",
        ],
        "do not fit the jail's memory limit of 256 MiB",
    );
    fails(
        &[
            "--kernel",
            kp,
            "--jail",
            rp,
            "--jail-user",
            "3999999999:3999999999",
        ],
        "uid 3999999999 does not exist",
    );
    fails(
        &["--kernel", kp, "--jail", rp, "--jail-pids", "1"],
        "pids limit 1",
    );
    fails(
        &[
            "--kernel",
            kp,
            "--jail",
            rp,
            "--api-socket",
            "/tmp/elsewhere.sock",
        ],
        "must lie inside the jail root",
    );
    std::fs::create_dir(&root).unwrap();
    // A root on a read-only file system (a tmpfs mounted read-only in a mount namespace
    // of this check's own, so nothing reaches the host).
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o ro tmpfs {rp} && exec {} --kernel {kp} --jail {rp}",
            env!("CARGO_BIN_EXE_vm-runner")
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not writable"), "{}", stderr(&o));
    std::fs::write(root.join("stray"), "x").unwrap();
    fails(&["--kernel", kp, "--jail", rp], "is not empty");
    assert!(cgroup_procs("vm-runner").is_none());
    let o = runner(&["--kernel", kp, "--jail", rp, "--jail-user", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
