//! container-runner as the runtime of Docker (dockerd `--add-runtime` through its
//! daemon.json) and of containerd (`ctr run --runc-binary`), end to end: run, `-d`,
//! exec, stop, rm, `--memory` enforced, `-v`, `--read-only --tmpfs`; `docker save` read
//! by virtkit-image and its docker-archive loaded and run by Docker. Each daemon runs
//! with a private data root and socket, in a mount namespace of its own (dockerd makes
//! mounts shared), without networking (`--network none`: no iptables, no ip_forward),
//! and leaves the host's sysctls and paths as they were. Needs root, busybox and
//! Debian's docker.io and containerd packages.
#![allow(clippy::unwrap_used)]

mod common;
use common::{busybox_tar, lock, require_root_and_busybox};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_container-runner");
/// Debian's 20.10 client (another `docker` may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";

fn require(paths: &[&str]) {
    for p in paths {
        assert!(
            Path::new(p).exists(),
            "{p} not found (apt-get install docker.io containerd)"
        );
    }
}

/// A daemon killed (and waited for) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers; the child is ours.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Host sysctls a daemon could set (dockerd: `ip_forward` unless `ip-forward` is false;
/// the root key quotas, raised to the kernel's defaults when lower), with their values.
fn host_sysctls() -> Vec<(&'static str, String)> {
    [
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
        "kernel/keys/root_maxkeys",
        "kernel/keys/root_maxbytes",
    ]
    .into_iter()
    .map(|k| {
        let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap_or_default();
        (k, v)
    })
    .collect()
}

/// Host paths a daemon makes whatever its private roots (dockerd: `/etc/docker/key.json`,
/// `/run/docker/plugins`; containerd's shim and ctr: `/run/containerd/{fifo,s,runc}`):
/// those that did not exist before are removed when dropped.
struct Leftovers(Vec<&'static str>);

impl Leftovers {
    fn watch(paths: &[&'static str]) -> Self {
        Leftovers(
            paths
                .iter()
                .copied()
                .filter(|p| !Path::new(p).exists())
                .collect(),
        )
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in &self.0 {
            if Path::new(p).is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The sha256 of `data`, hex (coreutils' sha256sum: no hashing crate for a test).
fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// An OCI image archive (an image layout as a tar) holding one uncompressed layer,
/// `layer_tar`, tagged `tag`: what `ctr image import` takes.
fn oci_archive(dir: &Path, layer_tar: &Path, tag: &str) -> PathBuf {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let d = sha256(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let layer = std::fs::read(layer_tar).unwrap();
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until `check` succeeds, or panics after `secs` with `what`.
fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !check() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn root_docker_runs_containers_with_container_runner() {
    let _g = lock();
    require_root_and_busybox();
    require(&["/usr/sbin/dockerd", DOCKER, "/usr/bin/containerd"]);
    let _leftovers = Leftovers::watch(&[
        "/etc/docker",
        "/etc/docker/key.json",
        "/run/docker",
        "/run/containerd",
    ]);
    let sysctls = host_sysctls();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("docker.sock");
    let config = d.join("daemon.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "runtimes": {"virtkit": {"path": BIN}},
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "iptables": false,
            // Else dockerd sets the host's net.ipv4.ip_forward to 1 as it starts.
            "ip-forward": false,
            "bridge": "none",
        })
        .to_string(),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
    let daemon = Daemon(
        Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "/usr/sbin/dockerd"])
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let host = format!("unix://{}", sock.display());
    let docker = |args: &[&str]| run(Command::new(DOCKER).arg("-H").arg(&host).args(args));
    wait_for(60, "dockerd did not come up", || {
        docker(&["info"]).status.success()
    });
    let tar = busybox_tar(d);
    let o = docker(&["import", tar.to_str().unwrap(), "vk-busybox:1"]);
    assert!(o.status.success(), "import: {}", text(&o));
    let base = [
        "--runtime",
        "virtkit",
        "--network",
        "none",
        "--pull",
        "never",
    ];
    let docker_run = |extra: &[&str], cmd: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        a.push("vk-busybox:1");
        a.extend_from_slice(cmd);
        docker(&a)
    };

    // run --rm, in the foreground.
    let o = docker_run(&["--rm"], &["echo", "hello-docker"]);
    assert!(o.status.success(), "run: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello-docker");
    // An exit status comes back.
    let o = docker_run(&["--rm"], &["sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // -d with --memory, exec, stop, rm.
    let o = docker_run(
        &["-d", "--name", "vk-d1", "--memory", "64m"],
        &["sleep", "1000"],
    );
    assert!(o.status.success(), "run -d: {}", text(&o));
    let o = docker(&[
        "exec",
        "vk-d1",
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert!(o.status.success(), "exec: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "67108864");
    // The limit is enforced: a process over it is killed (137).
    let o = docker_run(
        &["--rm", "--memory", "32m", "--memory-swap", "32m"],
        &["sh", "-c", "head -c 100m /dev/zero | tail > /dev/null"],
    );
    assert_eq!(
        o.status.code(),
        Some(137),
        "over the memory limit: {}",
        text(&o)
    );
    let o = docker(&["stop", "-t", "1", "vk-d1"]);
    assert!(o.status.success(), "stop: {}", text(&o));
    let o = docker(&["rm", "vk-d1"]);
    assert!(o.status.success(), "rm: {}", text(&o));

    // -v: a host directory.
    let vol = d.join("vol");
    std::fs::create_dir(&vol).unwrap();
    let v = format!("{}:/data", vol.display());
    let o = docker_run(
        &["--rm", "-v", &v],
        &["sh", "-c", "echo from-container > /data/f"],
    );
    assert!(o.status.success(), "-v: {}", text(&o));
    assert_eq!(
        std::fs::read_to_string(vol.join("f")).unwrap(),
        "from-container\n"
    );

    // --read-only --tmpfs.
    let o = docker_run(
        &["--rm", "--read-only", "--tmpfs", "/run"],
        &[
            "sh",
            "-c",
            "touch /run/ok && echo tmpfs-ok; touch /not-here",
        ],
    );
    let out = text(&o);
    assert!(out.contains("tmpfs-ok"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!o.status.success());

    // docker save -> virtkit-image, and virtkit-image's docker-archive -> docker load
    // (the seed's `docker save` / `docker load`), the loaded image run by Docker.
    let saved = d.join("saved.tar");
    let o = docker(&["save", "-o", saved.to_str().unwrap(), "vk-busybox:1"]);
    assert!(o.status.success(), "save: {}", text(&o));
    let store = virtkit_image::Store::open(d.join("vk-store")).unwrap();
    store
        .import_docker_archive(&saved, Some("vk-roundtrip:1"))
        .unwrap();
    let ours = d.join("ours.tar");
    store
        .export_docker_archive("vk-roundtrip:1", &ours)
        .unwrap();
    let o = docker(&["load", "-i", ours.to_str().unwrap()]);
    assert!(o.status.success(), "load: {}", text(&o));
    let mut a = vec!["run", "--rm"];
    a.extend_from_slice(&base);
    a.extend_from_slice(&["vk-roundtrip:1", "echo", "loaded-by-docker"]);
    let o = docker(&a);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "loaded-by-docker",
        "{}",
        text(&o)
    );
    drop(daemon);
    assert_eq!(
        host_sysctls(),
        sysctls,
        "dockerd changed the host's sysctls"
    );
}

#[test]
fn root_containerd_runs_containers_with_container_runner() {
    let _g = lock();
    require_root_and_busybox();
    require(&[
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/bin/containerd-shim-runc-v2",
    ]);
    let _leftovers = Leftovers::watch(&["/run/containerd"]);
    let sysctls = host_sysctls();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("containerd.sock");
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .unwrap();
    let log = std::fs::File::create(d.join("containerd.log")).unwrap();
    let daemon = Daemon(
        Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "/usr/bin/containerd"])
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ctr = |args: &[&str]| run(Command::new("/usr/bin/ctr").arg("-a").arg(&sock).args(args));
    wait_for(60, "containerd did not come up", || {
        ctr(&["version"]).status.success()
    });
    let archive = oci_archive(d, &busybox_tar(d), "1");
    let o = ctr(&[
        "image",
        "import",
        "--base-name",
        "vk.local/busybox",
        archive.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "ctr image import: {}", text(&o));
    let run_args = ["--runtime", "io.containerd.runc.v2", "--runc-binary", BIN];
    let ctr_run = |extra: &[&str], id: &str, cmd: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&run_args);
        a.push("vk.local/busybox:1");
        a.push(id);
        a.extend_from_slice(cmd);
        ctr(&a)
    };
    // In the foreground, with the exit status back.
    let o = ctr_run(&["--rm"], "vk-ctr1", &["echo", "hello-containerd"]);
    assert!(o.status.success(), "ctr run: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "hello-containerd"
    );
    let o = ctr_run(&["--rm"], "vk-ctr2", &["sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    // Detached with a memory limit; exec; kill; delete.
    let o = ctr_run(
        &["-d", "--memory-limit", "67108864"],
        "vk-ctr3",
        &["sleep", "1000"],
    );
    assert!(o.status.success(), "ctr run -d: {}", text(&o));
    let o = ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "vk-ctr3",
        "echo",
        "from-exec",
    ]);
    assert!(o.status.success(), "ctr task exec: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "from-exec");
    let o = ctr(&["task", "ls"]);
    let ls = String::from_utf8_lossy(&o.stdout).to_string();
    let pid: i32 = ls
        .lines()
        .find(|l| l.starts_with("vk-ctr3"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no task vk-ctr3: {ls}"));
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem_path = cg
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| panic!("no memory cgroup: {cg}"));
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{mem_path}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), "67108864");
    let o = ctr(&["task", "kill", "-s", "SIGKILL", "vk-ctr3"]);
    assert!(o.status.success(), "ctr task kill: {}", text(&o));
    wait_for(20, "vk-ctr3 did not stop", || {
        String::from_utf8_lossy(&ctr(&["task", "ls"]).stdout)
            .lines()
            .any(|l| l.starts_with("vk-ctr3") && l.contains("STOPPED"))
    });
    let o = ctr(&["task", "delete", "vk-ctr3"]);
    assert!(o.status.success(), "ctr task delete: {}", text(&o));
    let o = ctr(&["container", "delete", "vk-ctr3"]);
    assert!(o.status.success(), "ctr container delete: {}", text(&o));
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/memory{mem_path}")).exists(),
        "the cgroup was left behind"
    );
    drop(daemon);
    assert_eq!(
        host_sysctls(),
        sysctls,
        "containerd changed the host's sysctls"
    );
}
