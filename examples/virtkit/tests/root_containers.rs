//! Detached containers, published ports, networks and volumes end to end (root, `nft`):
//! a busybox httpd runs with `run -d -p`, answers on the host's loopback, shows in
//! `ps`, `logs`, `exec` and `inspect`, survives `stop`/`start`, and `rm` leaves no rule,
//! veth, namespace or mount; containers of a user network reach each other by name; a
//! named volume outlives its containers; restart policies, crash clean-up and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, nothing_left, text, Vk};
use virtkit_lab::registry::busybox_layout;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The CLI over a fresh state directory holding the busybox image `bb:1`; one test at a
/// time, as each checks that the host has no container rule or veth left.
struct Env {
    vk: Vk,
    _d: tempfile::TempDir,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Env {
    type Target = Vk;
    fn deref(&self) -> &Vk {
        &self.vk
    }
}

impl Env {
    fn new() -> Env {
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let vk = Vk::new(d.path().join("state"));
        let layout = busybox_layout(d.path(), &["/bin/sh", "-c", "echo hi"], &[]).unwrap();
        vk.ok(&["load", "-i", layout.to_str().unwrap(), "bb:1"]);
        Env {
            vk,
            _d: d,
            _guard: guard,
        }
    }
}

fn get(port: u16) -> std::io::Result<String> {
    common::http_get(([127, 0, 0, 1], port).into())
}

fn get_soon(port: u16) -> String {
    let t0 = Instant::now();
    loop {
        match get(port) {
            Ok(r) if r.contains("200 OK") => return r,
            r if t0.elapsed() > Duration::from_secs(20) => panic!("no HTTP 200 on {port}: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

const HTTPD: &str = "mkdir -p /www && echo hello from httpd > /www/index.html && echo started && exec busybox httpd -f -p 80 -h /www";

#[test]
fn root_detached_web_server_with_published_port() {
    let e = Env::new();
    let port = free_port();
    let p = format!("{port}:80");
    let id = e.ok(&[
        "run", "-d", "--name", "web", "-p", &p, "bb:1", "sh", "-c", HTTPD,
    ]);
    assert_eq!(id.trim().len(), 64, "{id}");
    assert!(get_soon(port).contains("hello from httpd"));
    let ps = e.ok(&["ps"]);
    assert!(
        ps.contains("web") && ps.contains("Up") && ps.contains(&format!("{port}->80/tcp")),
        "{ps}"
    );
    assert!(e.ok(&["logs", "web"]).contains("started"));
    assert_eq!(
        e.ok(&["exec", "web", "cat", "/www/index.html"]),
        "hello from httpd\n"
    );
    let o = e.run(&["exec", "web", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let insp: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "web"])).unwrap();
    assert_eq!(insp[0]["status"], "running");
    assert!(insp[0]["ip"].as_str().unwrap().starts_with("10.87."));
    // A name already taken and a port already published: 125, nothing made.
    e.fails(
        &["run", "-d", "--name", "web", "bb:1", "true"],
        "already in use",
    );
    e.fails(
        &["run", "-d", "-p", &p, "bb:1", "sleep", "5"],
        "already in use",
    );
    assert_eq!(e.ok(&["ps", "-a", "-q"]).lines().count(), 1);
    e.fails_with(1, &["rm", "web"], "is running");

    e.ok(&["stop", "-t", "2", "web"]);
    let ps = e.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited"), "{ps}");
    assert!(get(port).is_err());
    nothing_left_but_bundles(&e.root);
    e.ok(&["start", "web"]);
    get_soon(port);
    e.ok(&["restart", "-t", "1", "web"]);
    get_soon(port);
    assert_eq!(e.ok(&["logs", "web"]).matches("started").count(), 3);
    e.ok(&["rm", "-f", "web"]);
    assert_eq!(e.ok(&["ps", "-a", "-q"]), "");
    nothing_left(&e.root);
}

fn nothing_left_but_bundles(root: &Path) {
    let rules = Command::new("nft")
        .args(["list", "table", "ip", "virtkit"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("comment \"ctr "));
    assert!(std::fs::read_dir(root.join("netns"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn root_user_network_names_and_named_volumes() {
    let e = Env::new();
    e.ok(&["network", "create", "vktest"]);
    assert!(e.ok(&["network", "ls"]).contains("vktest"));
    e.fails(&["network", "create", "vktest"], "already exists");
    e.ok(&[
        "run",
        "-d",
        "--network",
        "vktest",
        "--name",
        "srv",
        "bb:1",
        "sh",
        "-c",
        HTTPD,
    ]);
    let t0 = Instant::now();
    let out = loop {
        let o = e.run(&[
            "run",
            "--rm",
            "--network",
            "vktest",
            "bb:1",
            "busybox",
            "wget",
            "-qO-",
            "http://srv/",
        ]);
        if o.status.success() || t0.elapsed() > Duration::from_secs(20) {
            break text(&o);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains("hello from httpd"), "{out}");
    e.fails(&["network", "rm", "vktest"], "in use");
    e.ok(&["rm", "-f", "srv"]);
    e.ok(&["network", "rm", "vktest"]);

    e.ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/data",
        "bb:1",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "-v",
            "keep:/data:ro",
            "bb:1",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    assert!(e.ok(&["volume", "ls"]).contains("keep"));
    e.ok(&["volume", "rm", "keep"]);
    assert_eq!(e.ok(&["ps", "-a", "-q"]), "");
    nothing_left(&e.root);
}

#[test]
fn root_restart_policy_crash_cleanup_and_bad_input() {
    let e = Env::new();
    // on-failure brings it back; stop ends it for good.
    e.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure",
        "bb:1",
        "sh",
        "-c",
        "echo run; sleep 0.2; exit 3",
    ]);
    let t0 = Instant::now();
    while e.ok(&["logs", "flaky"]).matches("run").count() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no restarts");
        std::thread::sleep(Duration::from_millis(100));
    }
    e.ok(&["stop", "-t", "1", "flaky"]);
    e.ok(&["rm", "flaky"]);
    // The foreground status is the container's.
    assert_eq!(
        e.run(&["run", "--rm", "bb:1", "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );

    // A monitor killed with SIGKILL: the next command cleans up after it.
    let port = free_port();
    e.ok(&[
        "run",
        "-d",
        "--name",
        "orphan",
        "-p",
        &format!("{port}:80"),
        "bb:1",
        "sh",
        "-c",
        HTTPD,
    ]);
    get_soon(port);
    let insp: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "orphan"])).unwrap();
    let monitor = insp[0]["monitor"][0].as_i64().unwrap();
    let ctr_pid = insp[0]["runtime"]["pid"].as_i64().unwrap();
    // SAFETY: plain kill(2) of the processes the test made.
    unsafe {
        libc::kill(monitor as i32, libc::SIGKILL);
        libc::kill(ctr_pid as i32, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    let ps = e.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited"), "{ps}");
    nothing_left_but_bundles(&e.root);
    e.ok(&["rm", "orphan"]);

    for (args, why) in [
        (
            vec!["run", "-d", "-p", "80:x", "bb:1", "true"],
            "invalid port spec",
        ),
        (
            vec!["run", "-d", "--network", "nonet", "bb:1", "true"],
            "not found",
        ),
        (
            vec!["run", "-d", "--restart", "sometimes", "bb:1", "true"],
            "restart policy",
        ),
        (vec!["run", "-d", "nosuchimage:1", "true"], "nosuchimage"),
        (
            vec!["run", "-d", "--name", "bad/name", "bb:1", "true"],
            "invalid container name",
        ),
        (vec!["stop", "nobody"], "No such container"),
    ] {
        let o = e.run(&args);
        assert_ne!(o.status.code(), Some(0), "{args:?}");
        assert!(text(&o).contains(why), "{args:?}: {}", text(&o));
    }
    assert_eq!(e.ok(&["ps", "-a", "-q"]), "");
    nothing_left(&e.root);
}
