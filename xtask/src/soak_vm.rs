//! `cargo xtask soak vm-cycles [--cycles N] [--net]`: one long-running vm-runner, driven
//! through its control API, creates, boots, shuts down and deletes a VM N times (default
//! 100) on the host's /dev/kvm (a tiny guest that spins; Linux need not boot). After every
//! cycle it samples the process: resident memory, open file descriptors, threads, and with
//! `--net` whether the cycle's tap is gone. It fails on any leak: RSS that keeps growing
//! (more than 2 MiB over the first cycles), or descriptors, threads or taps left behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask soak vm-cycles [--cycles N] [--net]";
const TAP: &str = "vksoak0";
/// Cycles before the baseline sample (allocator and page-cache warm-up).
const WARMUP: u32 = 5;

/// One request over a fresh connection; returns the status code and the body.
fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket).context("connecting to the API socket")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad response to {path}: {out:?}"))?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

fn expect(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    want: u16,
) -> Result<String> {
    let (code, b) = request(socket, method, path, body)?;
    if code != want {
        bail!("{method} {path}: HTTP {code} (wanted {want}): {b}");
    }
    Ok(b)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let count = |d: &str| std::fs::read_dir(format!("/proc/{pid}/{d}")).map(|r| r.count());
    Ok(Sample {
        rss_kib,
        fds: count("fd")?,
        threads: count("task")?,
    })
}

struct Runner(Child);

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the soak.
pub fn vm_cycles(args: &[String]) -> Result<()> {
    let mut cycles = 100u32;
    let mut net = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cycles" => cycles = it.next().context(USAGE)?.parse().context("--cycles")?,
            "--net" => net = true,
            other => bail!("soak vm-cycles: unknown option {other}; {USAGE}"),
        }
    }
    if cycles <= WARMUP {
        bail!("soak vm-cycles: --cycles must be more than {WARMUP}");
    }
    crate::cargo(&["build", "--release", "-p", "vm-runner"])?;
    let root = virtkit_lab::workspace_root()?;
    let runner = root.join("target/release/vm-runner");
    let dir = tempfile::tempdir()?;
    let kernel = dir.path().join("spin.elf");
    // jmp $ : the guest runs until the VMM stops it.
    std::fs::write(&kernel, virtkit_boot::testing::tiny_elf(&[0xeb, 0xfe]))?;
    let socket = dir.path().join("api.sock");
    let log = std::fs::File::create(dir.path().join("vm-runner.log"))?;
    let child = Command::new(&runner)
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", runner.display()))?;
    let pid = child.id();
    let _guard = Runner(child);
    let start = Instant::now();
    while request(&socket, "GET", "vmm.ping", None).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("vm-runner did not answer on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let nets = if net {
        format!(r#","net":[{{"tap":"{TAP}"}}]"#)
    } else {
        String::new()
    };
    let config = format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":67108864}},
            "payload":{{"kernel":"{}"}},"serial":{{"mode":"Null"}}{nets}}}"#,
        kernel.display()
    );
    let mut samples = Vec::with_capacity(cycles as usize);
    let t0 = Instant::now();
    for i in 0..cycles {
        expect(&socket, "PUT", "vm.create", Some(&config), 204)?;
        expect(&socket, "PUT", "vm.boot", None, 204)?;
        let info = expect(&socket, "GET", "vm.info", None, 200)?;
        if !info.contains("\"Running\"") {
            bail!("cycle {i}: vm.info after boot: {info}");
        }
        expect(&socket, "PUT", "vm.shutdown", None, 204)?;
        expect(&socket, "PUT", "vm.delete", None, 204)?;
        if net && Path::new("/sys/class/net").join(TAP).exists() {
            bail!("cycle {i}: tap {TAP} left behind after vm.delete");
        }
        samples.push(sample(pid)?);
    }
    let elapsed = t0.elapsed();
    expect(&socket, "PUT", "vmm.shutdown", None, 200)?;
    let base = samples[WARMUP as usize - 1];
    let last = samples[samples.len() - 1];
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "soak vm-cycles: {cycles} cycles in {:.1} s ({:.0} ms each){}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / f64::from(cycles),
        if net { ", with a tap each" } else { "" }
    );
    println!(
        "  after cycle {WARMUP}: RSS {} KiB, {} fds, {} threads; after cycle {cycles}: RSS {} KiB \
         (max {max_rss}), {} fds, {} threads",
        base.rss_kib, base.fds, base.threads, last.rss_kib, last.fds, last.threads
    );
    let mut leaks = Vec::new();
    if last.rss_kib > base.rss_kib + 2048 {
        leaks.push(format!("RSS grew {} KiB", last.rss_kib - base.rss_kib));
    }
    if last.fds > base.fds {
        leaks.push(format!("{} file descriptors", last.fds - base.fds));
    }
    if last.threads > base.threads {
        leaks.push(format!("{} threads", last.threads - base.threads));
    }
    if !leaks.is_empty() {
        bail!("soak vm-cycles: leaks: {}", leaks.join(", "));
    }
    println!("soak vm-cycles: no leak");
    Ok(())
}
