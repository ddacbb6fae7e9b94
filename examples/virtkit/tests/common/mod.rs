//! Shared helpers of the `virtkit` CLI's root tests: the CLI with a state directory and
//! the static container-runner, output for messages, HTTP, and the host-wide check that
//! no container left anything.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// `virtkit --root ROOT --runtime RUNTIME`; removes every container of ROOT when dropped,
/// so a failed test leaves nothing running.
pub struct Vk {
    pub root: PathBuf,
    pub runtime: PathBuf,
}

impl Vk {
    /// The CLI over `root` with the static container-runner the lab builds.
    pub fn new(root: PathBuf) -> Vk {
        let runtime = virtkit_lab::static_binary("container-runner", "container-runner").unwrap();
        Vk { root, runtime }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_virtkit"))
            .arg("--root")
            .arg(&self.root)
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `args`, which must exit 125 (`run`'s own errors) saying `why`.
    pub fn fails(&self, args: &[&str], why: &str) {
        self.fails_with(125, args, why)
    }

    /// Docker's codes: 125 for `run`'s own errors, 1 for the other verbs'.
    pub fn fails_with(&self, code: i32, args: &[&str], why: &str) {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(why), "{args:?}: {}", text(&o));
    }
}

impl Drop for Vk {
    fn drop(&mut self) {
        let o = self.run(&["ps", "-a", "-q"]);
        for id in String::from_utf8_lossy(&o.stdout).lines() {
            let _ = self.run(&["rm", "-f", id]);
        }
    }
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `GET /` over HTTP/1.0; the whole answer.
pub fn http_get(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What must be gone once no container runs: rules, veths, mounts under `root`.
pub fn nothing_left(root: &Path) {
    let rules = Command::new("nft")
        .args(["list", "table", "ip", "virtkit"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("comment \"ctr "), "{rules}");
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.lines().any(|l| l.starts_with("vkv")), "{links}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
}
