//! The `virtkit` CLI against podman, side by side in one run, with the Debian 12 + apache2
//! image (`virtkit_lab::apache::apache2_layout`, one 82 MiB gzip layer) from a local
//! registry (Debian's docker-registry on 127.0.0.1, plain HTTP), rounds alternating:
//!
//! 1. pull + unpack into a cold store: `virtkit pull` then `virtkit create` (virtkit's
//!    pull only downloads; the layers are unpacked by the first create) against `podman
//!    pull --tls-verify=false` (downloads and applies the layer); `virtkit pull` alone is
//!    printed too. Target: at most 0.7× podman.
//! 2. `run -d -p PORT:80 IMAGE apache2ctl -D FOREGROUND` until the first HTTP 200 on
//!    127.0.0.1:PORT: virtkit with container-runner against podman with crun (CNI
//!    networking on a network of its own, 10.89.77.0/24: podman's default 10.88.0.0/16 is
//!    the subnet of virtkit's own bridge). `rm -f` after each round. Target: at most 0.7×.
//! 3. `run --rm IMAGE true`, warm store: virtkit + container-runner, podman + crun and
//!    podman + container-runner.
//!
//! ```text
//! cargo run --release -p virtkit-benches --bin container-workflow-vs-podman -- [ROUNDS] [RUNS]
//! ```
//! Root. ROUNDS (default 5) for 1 and 2, RUNS (default 20) for 3. Everything runs in a
//! private mount namespace where `/sys/fs/cgroup/unified` is unmounted (crun refuses this
//! host's hybrid cgroup layout otherwise; all get the same view), stores on `/dev/shm`.
//! `VIRTKIT` and `CONTAINER_RUNNER` override the binaries (default: the static builds of
//! `virtkit_lab::static_binary`). Ends with `RESULT` lines as `cargo xtask bench` reads them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use virtkit_lab::apache::{apache2_layout, APACHE2_REFERENCE};
use virtkit_lab::registry::TestRegistry;

const PODMAN_NET: &str = "vkbench";
const PODMAN_SUBNET: &str = "10.89.77.0/24";
const APACHE: [&str; 3] = ["apache2ctl", "-D", "FOREGROUND"];

/// A private mount namespace without `/sys/fs/cgroup/unified` (crun's hybrid check).
fn private_mounts() -> Result<()> {
    // SAFETY: unshare and mount with constant, valid arguments; still one thread here.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        let root = c"/";
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
        let unified = c"/sys/fs/cgroup/unified";
        if Path::new("/sys/fs/cgroup/unified").exists() {
            let _ = libc::umount2(unified.as_ptr(), libc::MNT_DETACH);
        }
    }
    Ok(())
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

struct Tools {
    virtkit: PathBuf,
    runner: PathBuf,
}

impl Tools {
    fn vk(&self, root: &Path, runtime: &Path, args: &[&str]) -> Result<Output> {
        let mut c = Command::new(&self.virtkit);
        c.arg("--root").arg(root).arg("--runtime").arg(runtime);
        Ok(c.args(args).stdin(Stdio::null()).output()?)
    }

    fn vk_ok(&self, root: &Path, args: &[&str]) -> Result<String> {
        let o = self.vk(root, &self.runner, args)?;
        if !o.status.success() {
            bail!("virtkit {args:?}: {}", text(&o));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

fn podman(root: &Path, runtime: Option<&Path>, args: &[&str]) -> Result<Output> {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .arg("--network-config-dir")
        .arg(root.join("cni"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
    if let Some(r) = runtime {
        c.arg("--runtime").arg(r);
    }
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .context("running podman")
}

fn podman_ok(root: &Path, runtime: Option<&Path>, args: &[&str]) -> Result<String> {
    let o = podman(root, runtime, args)?;
    if !o.status.success() {
        bail!("podman {args:?}: {}", text(&o));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// podman's `run` flags: our network, and ulimits the host's hard limits allow.
const PODMAN_RUN: [&str; 6] = [
    "--network",
    PODMAN_NET,
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Removes a podman store (its network, its overlay mounts) and the folder.
fn podman_reset(root: &Path) {
    let _ = podman(root, None, &["rm", "-a", "-f", "-t", "0"]);
    let _ = podman(root, None, &["network", "rm", "-f", PODMAN_NET]);
    let _ = podman(root, None, &["system", "reset", "-f"]);
    let _ = std::fs::remove_dir_all(root);
}

fn settle() {
    let _ = Command::new("sync").status();
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_200(port: u16) -> bool {
    let get = || -> std::io::Result<bool> {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    get().unwrap_or(false)
}

/// Seconds from `t` to the first HTTP 200 on the port; `None` after `limit`.
fn until_200(t: Instant, port: u16, limit: Duration) -> Option<f64> {
    while t.elapsed() < limit {
        if http_200(port) {
            return Some(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One figure of the table.
struct Row {
    name: &'static str,
    what: String,
    ours: Option<f64>,
    peer: &'static str,
    theirs: f64,
    target: Option<f64>,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (containers, networks, podman's own store)");
    }
    for p in ["podman", "crun", "sync"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()?
            .stdout
            .is_empty()
        {
            bail!("missing {p} (apt-get install podman crun)");
        }
    }
    let from_env = |var: &str, bin: &str| -> Result<PathBuf> {
        match std::env::var_os(var) {
            Some(p) => Ok(PathBuf::from(p)),
            None => Ok(virtkit_lab::static_binary(bin, bin)?),
        }
    };
    let tools = Tools {
        virtkit: from_env("VIRTKIT", "virtkit")?,
        runner: from_env("CONTAINER_RUNNER", "container-runner")?,
    };
    let layout = apache2_layout()?;
    private_mounts()?;
    let dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };
    let d = dir.path();
    eprintln!(
        "working in {}; virtkit {}, runtime {}",
        d.display(),
        tools.virtkit.display(),
        tools.runner.display()
    );
    let reg = TestRegistry::start(d, None)?;
    reg.push(&layout, APACHE2_REFERENCE, "bench/apache2:12", None)?;
    let image = format!("{}/bench/apache2:12", reg.addr);
    let mut rows = Vec::new();

    // 1. Pull + unpack, cold stores.
    let (mut vk_pull, mut vk_unpacked, mut pm_pull) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let root = d.join(format!("vk-cold-{round}"));
        settle();
        let t = Instant::now();
        tools.vk_ok(&root, &["pull", &image])?;
        let pulled = t.elapsed().as_secs_f64();
        tools.vk_ok(
            &root,
            &["create", "--network", "none", "--name", "cold", &image],
        )?;
        let unpacked = t.elapsed().as_secs_f64();
        tools.vk_ok(&root, &["rm", "-f", "cold"])?;
        let _ = std::fs::remove_dir_all(&root);

        let pr = d.join(format!("pm-cold-{round}"));
        settle();
        let t = Instant::now();
        podman_ok(&pr, None, &["pull", "-q", "--tls-verify=false", &image])?;
        let p = t.elapsed().as_secs_f64();
        podman_reset(&pr);
        println!("pull round {round}: virtkit pull {pulled:.2} s, + create (unpack) {unpacked:.2} s; podman pull {p:.2} s");
        vk_pull.push(pulled);
        vk_unpacked.push(unpacked);
        pm_pull.push(p);
    }
    rows.push(Row {
        name: "pull-unpack-vs-podman",
        what: format!("pull + unpack of apache2 (82 MiB gzip), cold store: virtkit pull + create vs podman pull, median of {rounds}"),
        ours: Some(median(&vk_unpacked)),
        peer: "podman",
        theirs: median(&pm_pull),
        target: Some(0.7),
    });
    rows.push(Row {
        name: "pull-only-vs-podman",
        what: format!(
            "virtkit pull alone (download, no unpack) vs podman pull, median of {rounds}"
        ),
        ours: Some(median(&vk_pull)),
        peer: "podman",
        theirs: median(&pm_pull),
        target: None,
    });

    // Warm stores for 2 and 3.
    let vroot = d.join("vk-warm");
    tools.vk_ok(&vroot, &["pull", &image])?;
    let proot = d.join("pm-warm");
    podman_ok(&proot, None, &["pull", "-q", "--tls-verify=false", &image])?;
    podman_ok(
        &proot,
        None,
        &["network", "create", "--subnet", PODMAN_SUBNET, PODMAN_NET],
    )?;
    let crun = PathBuf::from("/usr/bin/crun");
    let backend = podman_ok(
        &proot,
        None,
        &["info", "--format", "{{.Host.NetworkBackend}}"],
    )?;
    println!("podman's network backend: {}", backend.trim());

    // 2. run -d -p to the first HTTP 200; who goes first alternates.
    let limit = Duration::from_secs(20);
    let (mut vk_http, mut pm_http) = (Vec::new(), Vec::new());
    let mut vk_failure = None;
    for round in 0..=rounds {
        // Round 0 is a warm-up (virtkit's first create unpacks the layer).
        let mut ours = || -> Result<Option<f64>> {
            let port = free_port()?;
            let publish = format!("{port}:80");
            let mut a = vec!["run", "-d", "--name", "web", "-p", &publish, &image];
            a.extend(APACHE);
            settle();
            let t = Instant::now();
            let o = tools.vk(&vroot, &tools.runner, &a)?;
            let got = if o.status.success() {
                until_200(t, port, limit)
            } else {
                None
            };
            if got.is_none() && vk_failure.is_none() {
                let logs = tools.vk(&vroot, &tools.runner, &["logs", "web"])?;
                vk_failure = Some(format!("run: {}; logs: {}", text(&o), text(&logs)));
            }
            tools.vk(&vroot, &tools.runner, &["rm", "-f", "web"])?;
            Ok(got)
        };
        let theirs = || -> Result<f64> {
            let port = free_port()?;
            let publish = format!("{port}:80");
            let mut a = vec!["run", "-d", "--name", "web", "-p", &publish];
            a.extend(PODMAN_RUN);
            a.push(&image);
            a.extend(APACHE);
            settle();
            let t = Instant::now();
            podman_ok(&proot, Some(&crun), &a)?;
            let p = until_200(t, port, limit).context("podman + crun: no HTTP 200")?;
            podman_ok(&proot, Some(&crun), &["rm", "-f", "-t", "0", "web"])?;
            Ok(p)
        };
        let (v, p) = if round % 2 == 0 {
            let v = ours()?;
            (v, theirs()?)
        } else {
            let p = theirs()?;
            (ours()?, p)
        };
        println!(
            "run -d -p round {round}{}: virtkit {}, podman + crun {p:.3} s",
            if round == 0 { " (warm-up)" } else { "" },
            v.map_or("no HTTP 200".to_string(), |s| format!("{s:.3} s")),
        );
        if round > 0 {
            vk_http.extend(v);
            pm_http.push(p);
        }
    }
    if let Some(f) = &vk_failure {
        println!("virtkit: apache2 did not answer within {limit:?}: {f}");
    }
    rows.push(Row {
        name: "run-to-http-vs-podman-crun",
        what: format!("run -d -p PORT:80 apache2 to the first HTTP 200, virtkit + container-runner vs podman + crun, median of {rounds}"),
        ours: (vk_http.len() == rounds).then(|| median(&vk_http)),
        peer: "podman+crun",
        theirs: median(&pm_http),
        target: Some(0.7),
    });

    // 3. run --rm IMAGE true, warm store.
    let runner = tools.runner.clone();
    let mut times: [Vec<f64>; 3] = Default::default();
    for i in 0..runs + 2 {
        let mut timed = |k: usize, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let t = Instant::now();
            f()?;
            if i >= 2 {
                times[k].push(t.elapsed().as_secs_f64());
            }
            Ok(())
        };
        timed(0, &mut || {
            tools
                .vk_ok(&vroot, &["run", "--rm", &image, "true"])
                .map(drop)
        })?;
        for (k, rt) in [(1, &crun), (2, &runner)] {
            let mut a = vec!["run", "--rm"];
            a.extend(PODMAN_RUN);
            a.extend([image.as_str(), "true"]);
            timed(k, &mut || podman_ok(&proot, Some(rt), &a).map(drop))?;
        }
    }
    let (v, c, r) = (median(&times[0]), median(&times[1]), median(&times[2]));
    println!("run --rm true, median of {runs}: virtkit {:.1} ms, podman + crun {:.1} ms, podman + container-runner {:.1} ms", v * 1e3, c * 1e3, r * 1e3);
    rows.push(Row {
        name: "run-rm-true-vs-podman-crun",
        what: format!("run --rm apache2 true, warm store, virtkit + container-runner vs podman + crun, median of {runs}"),
        ours: Some(v),
        peer: "podman+crun",
        theirs: c,
        target: None,
    });
    rows.push(Row {
        name: "run-rm-true-podman-runner-vs-crun",
        what: format!("run --rm apache2 true, warm store, podman + container-runner vs podman + crun, median of {runs}"),
        ours: Some(r),
        peer: "podman+crun",
        theirs: c,
        target: None,
    });

    tools.vk(&vroot, &tools.runner, &["ps", "-a"])?;
    podman_reset(&proot);
    drop(reg);

    println!("\n| figure | ours | peer | peer's | ratio | target | met |\n| --- | ---: | --- | ---: | ---: | --- | --- |");
    for r in &rows {
        let ours = r.ours.map_or("failed".into(), |o| format!("{:.3} s", o));
        let ratio = r
            .ours
            .map_or("-".into(), |o| format!("{:.2}×", o / r.theirs));
        let target = r.target.map_or("—".into(), |t| format!("≤ {t:.2}"));
        let met = match (r.ours, r.target) {
            (Some(o), Some(t)) if o / r.theirs <= t => "yes",
            (_, Some(_)) => "**no**",
            _ => "—",
        };
        println!(
            "| {} (`{}`) | {ours} | {} | {:.3} s | {ratio} | {target} | {met} |",
            r.what, r.name, r.peer, r.theirs
        );
    }
    println!();
    for r in &rows {
        let target = r
            .target
            .map_or(String::new(), |t| format!(" target_ratio=<={t:.2}"));
        match r.ours {
            Some(o) => {
                println!(
                "RESULT name={} value={:.1} unit=ms peer={} peer_value={:.1}{target} label=\"{}\"",
                r.name, o * 1e3, r.peer, r.theirs * 1e3, r.what
            )
            }
            None => println!(
                "RESULT-MISSING {}: virtkit's container never answered HTTP 200",
                r.name
            ),
        }
    }
    Ok(())
}
