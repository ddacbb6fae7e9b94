//! `cargo xtask soak containers [--cycles N]`: N (default 1000) `container-runner run`
//! cycles on the host, each with a fresh busybox bundle, then `delete`. Every 10th cycle
//! ("full") adds a tmpfs and a bind mount, a 64 MiB memory limit and a network namespace
//! whose `lo` it brings up, and checks all three from inside; the others ("plain") run
//! `/bin/true` without a network namespace. After one warm-up cycle of each kind, what a
//! leak would leave is snapshotted, and compared every 100 cycles and at the end: the soak's
//! own file descriptors, lingering runtime and container processes (and their fds), zombies
//! and the soak's children, mounts, the containers' cgroup directories under `virtkit/` in
//! every hierarchy (v1 controllers and the v2 mount), network interfaces and namespaces,
//! and the runtime's state directories. Any growth fails the soak with what grew, after
//! how many cycles and in which kind of cycle. Needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask soak containers [--cycles N]";
/// Every FULL_EVERY-th cycle is a full one (mounts, memory limit, network namespace).
const FULL_EVERY: u32 = 10;
/// Cycles between two leak checks.
const CHECK_EVERY: u32 = 100;
/// The runtime's cgroup parent (`virtkit/<id>` when the config has no cgroupsPath).
const CGROUP_PARENT: &str = "virtkit";
const MEMORY_LIMIT: u64 = 64 << 20;
/// What a full cycle runs: it checks its network namespace, mounts and memory limit.
const FULL_SCRIPT: &str = "set -e; ip link set lo up; ls /sys/class/net > /data/net; \
    grep ' /mnt ' /proc/mounts | cut -d' ' -f3 > /data/mnt; echo ok > /mnt/x; \
    cat /mnt/x > /data/tmpfs; cat /sys/fs/cgroup/memory/memory.limit_in_bytes \
    > /data/limit 2>/dev/null || cat /sys/fs/cgroup/memory.max > /data/limit";
/// Longest a single runtime command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a snapshot holds: per resource, one string per item (duplicates count).
type Snapshot = BTreeMap<&'static str, Vec<String>>;

/// One resource that grew between two snapshots.
#[derive(Debug, PartialEq)]
struct Growth {
    what: &'static str,
    before: usize,
    after: usize,
    /// Items of `after` not matched by one of `before` (a multiset difference).
    new: Vec<String>,
}

/// The resources with more items in `after` than in `before`.
fn compare(before: &Snapshot, after: &Snapshot) -> Vec<Growth> {
    let mut out = Vec::new();
    for (&what, items) in after {
        let old = before.get(what).map_or(&[][..], Vec::as_slice);
        if items.len() <= old.len() {
            continue;
        }
        let mut left: BTreeMap<&str, usize> = BTreeMap::new();
        for o in old {
            *left.entry(o.as_str()).or_default() += 1;
        }
        let new = items
            .iter()
            .filter(|i| match left.get_mut(i.as_str()) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .cloned()
            .collect();
        out.push(Growth {
            what,
            before: old.len(),
            after: items.len(),
            new,
        });
    }
    out
}

/// Per kind of cycle: cycles run and the summed change of each resource's count.
#[derive(Default)]
struct KindDeltas {
    cycles: u32,
    delta: BTreeMap<&'static str, i64>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Uid:"))?;
            Some(l.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}

/// `ls` of a directory (names), empty when it does not exist.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The targets of a process's descriptors, inode numbers dropped (`pipe:`, `socket:`).
fn fd_targets(fd_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = names(fd_dir)
        .iter()
        .filter_map(|n| std::fs::read_link(fd_dir.join(n)).ok())
        .map(|t| {
            let t = t.to_string_lossy().into_owned();
            match t.split_once(":[") {
                Some((kind, _)) => format!("{kind}:"),
                None => t,
            }
        })
        .collect();
    v.sort();
    v
}

struct Soak {
    runner: PathBuf,
    /// The runtime's --root.
    state: PathBuf,
    /// Bundles live here, one per cycle.
    work: tempfile::TempDir,
    /// Every container id starts with it (cgroups and processes are told apart by it).
    prefix: String,
    spec: serde_json::Value,
    applets: Vec<String>,
}

impl Soak {
    fn snapshot(&self) -> Snapshot {
        let me = std::process::id().to_string();
        let state = self.state.to_string_lossy().into_owned();
        let cg_mark = format!("/{CGROUP_PARENT}/{}", self.prefix);
        let mut s = Snapshot::new();
        s.insert("soak fds", fd_targets(Path::new("/proc/self/fd")));
        let mut netns = names(Path::new("/run/netns"));
        for pid in names(Path::new("/proc")) {
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let p = Path::new("/proc").join(&pid);
            let Ok(stat) = std::fs::read_to_string(p.join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split at the last ')'.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let mut f = tail.split_whitespace();
            let (st, ppid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            let line = format!("{pid} {comm} {st} ppid {ppid}");
            let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let runtime = pid != me && String::from_utf8_lossy(&cmdline).contains(&state);
            let cg = std::fs::read_to_string(p.join("cgroup")).unwrap_or_default();
            for (k, hit) in [
                ("soak children", ppid == me),
                ("zombies", st == "Z"),
                ("runtime processes", runtime),
                ("container processes", cg.contains(&cg_mark)),
            ] {
                if hit {
                    s.entry(k).or_default().push(line.clone());
                }
            }
            if runtime {
                let fds = fd_targets(&p.join("fd"))
                    .into_iter()
                    .map(|t| format!("{pid}: {t}"));
                s.entry("runtime fds").or_default().extend(fds);
            }
            if let Ok(ns) = std::fs::read_link(p.join("ns/net")) {
                netns.push(ns.to_string_lossy().into_owned());
            }
        }
        netns.sort();
        netns.dedup();
        s.insert("net namespaces", netns);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = mountinfo.lines().map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let post = l.split_once(" - ").map_or("", |(_, p)| p);
            format!("{} {post}", f.get(4).unwrap_or(&""))
        });
        s.insert("mounts", mounts.collect());
        let mut cgroups = Vec::new();
        for h in names(Path::new("/sys/fs/cgroup")) {
            let parent = Path::new("/sys/fs/cgroup").join(&h).join(CGROUP_PARENT);
            let shown = format!("{h}/{CGROUP_PARENT}");
            cgroup_dirs(&parent, &shown, &self.prefix, &mut cgroups);
        }
        s.insert("cgroup dirs", cgroups);
        s.insert("net interfaces", names(Path::new("/sys/class/net")));
        s.insert("state dirs", names(&self.state));
        s
    }

    /// Writes a fresh bundle for container `id` and returns its directory.
    fn bundle(&self, id: &str, full: bool) -> Result<PathBuf> {
        let b = self.work.path().join(id);
        let r = b.join("rootfs");
        for d in [
            "bin", "proc", "sys", "dev", "etc", "tmp", "root", "mnt", "data",
        ] {
            std::fs::create_dir_all(r.join(d))?;
        }
        std::fs::copy("/bin/busybox", r.join("bin/busybox"))?;
        for a in &self.applets {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(a))?;
        }
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        let mut cfg = self.spec.clone();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
        if full {
            let shared = b.join("shared");
            std::fs::create_dir(&shared)?;
            cfg["process"]["args"] = serde_json::json!(["sh", "-c", FULL_SCRIPT]);
            for set in ["bounding", "effective", "permitted"] {
                if let Some(caps) = cfg["process"]["capabilities"][set].as_array_mut() {
                    caps.push("CAP_NET_ADMIN".into());
                }
            }
            let mounts = cfg["mounts"].as_array_mut().context("spec: no mounts")?;
            mounts.push(serde_json::json!({"destination": "/mnt", "type": "tmpfs",
                "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"]}));
            mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
                "source": shared, "options": ["rbind", "rw"]}));
            cfg["linux"]["resources"]["memory"] = serde_json::json!({"limit": MEMORY_LIMIT});
        } else if let Some(ns) = cfg["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
        Ok(b)
    }

    /// Runs the runtime with `args` (output into files in `dir`, not pipes: a container
    /// process keeps its stdio); returns success and stdout + stderr.
    fn rt(&self, dir: &Path, args: &[&str]) -> Result<(bool, String)> {
        let out_p = dir.join(".rt.out");
        let out = std::fs::File::create(&out_p)?;
        let mut child = Command::new(&self.runner)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.runner.display()))?;
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if t0.elapsed() > COMMAND_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("container-runner {args:?} still running after {COMMAND_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_micros(250));
        };
        let out = std::fs::read_to_string(&out_p).unwrap_or_default();
        Ok((status.success(), out))
    }

    /// One cycle: bundle, `run`, `delete`, checks; returns the time of run + delete.
    fn cycle(&self, id: &str, full: bool) -> Result<Duration> {
        let b = self.bundle(id, full)?;
        let bs = b.to_string_lossy().into_owned();
        let t0 = Instant::now();
        let (ok, out) = self.rt(&b, &["run", "--bundle", &bs, id])?;
        if !ok {
            bail!("container-runner run {id} failed: {out}");
        }
        // `run` deletes the container itself: `delete` must find nothing left.
        let (ok, del) = self.rt(&b, &["delete", id])?;
        let took = t0.elapsed();
        if !ok && !del.contains("does not exist") {
            bail!("container-runner delete {id} failed: {del}");
        }
        if full {
            let read = |n: &str| std::fs::read_to_string(b.join("shared").join(n));
            let (limit, net) = (read("limit")?, read("net")?);
            let (mnt, tmpfs) = (read("mnt")?, read("tmpfs")?);
            if limit.trim() != MEMORY_LIMIT.to_string()
                || net.trim() != "lo"
                || mnt.trim() != "tmpfs"
                || tmpfs.trim() != "ok"
            {
                bail!("{id}: inside the container: memory limit {limit:?}, interfaces {net:?}, /mnt {mnt:?}, tmpfs {tmpfs:?}");
            }
        }
        std::fs::remove_dir_all(&b).with_context(|| format!("removing {bs}"))?;
        Ok(took)
    }
}

/// Collects the directories under `dir` (shown as `shown/...`) whose path holds `prefix`.
fn cgroup_dirs(dir: &Path, shown: &str, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let name = format!("{shown}/{}", e.file_name().to_string_lossy());
            if name.contains(prefix) {
                out.push(name.clone());
            }
            cgroup_dirs(&e.path(), &name, prefix, out);
        }
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        // Best effort after a failure: no container left behind.
        for id in names(&self.state) {
            let _ = self.rt(self.work.path(), &["delete", "--force", &id]);
        }
    }
}

fn quantiles(v: &[Duration]) -> String {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let (p50, p90, max) = (q(0.5), q(0.9), q(1.0));
    format!("p50 {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms")
}

/// The leak report: what grew, by how much after `cycles`, and in which kind of cycle.
fn report(growth: &[Growth], cycles: u32, kinds: &[(&str, &KindDeltas)]) -> String {
    let mut s = format!("soak containers: LEAK after {cycles} cycles:");
    for g in growth {
        let d = g.after - g.before;
        s += &format!(
            "\n  {}: {} -> {} (+{d}, {:.2} per cycle)",
            g.what,
            g.before,
            g.after,
            d as f64 / f64::from(cycles)
        );
        for (kind, k) in kinds {
            let kd = k.delta.get(g.what).copied().unwrap_or(0);
            let per = kd as f64 / f64::from(k.cycles.max(1));
            s += &format!("; {kind} cycles {kd:+} over {} ({per:.2} each)", k.cycles);
        }
        for n in g.new.iter().take(10) {
            s += &format!("\n      new: {n}");
        }
        if g.new.len() > 10 {
            s += &format!("\n      ... and {} more", g.new.len() - 10);
        }
    }
    s
}

pub fn run(args: &[String]) -> Result<()> {
    let mut cycles = 1000u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cycles" => cycles = it.next().context(USAGE)?.parse().context("--cycles")?,
            other => bail!("soak containers: unknown option {other}; {USAGE}"),
        }
    }
    if cycles == 0 {
        bail!("soak containers: --cycles must be at least 1");
    }
    if !is_root() {
        bail!(
            "soak containers needs root (containers need namespaces, cgroups and mounts): \
             run it as root, e.g. `sudo -E cargo xtask soak containers`"
        );
    }
    if !Path::new("/bin/busybox").exists() {
        virtkit_lab::ensure_packages(&["busybox-static"])?;
    }
    crate::cargo(&["build", "--release", "-p", "container-runner"])?;
    let runner = virtkit_lab::workspace_root()?.join("target/release/container-runner");
    // On tmpfs where there is one: a bundle's ~300 symlinks are slow on a VM's disk.
    let work = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    let state = work.path().join("state");
    std::fs::create_dir(&state)?;
    let out = Command::new(&runner)
        .args(["spec", "-b"])
        .arg(work.path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("container-runner spec: {err}");
    }
    let spec = serde_json::from_slice(&std::fs::read(work.path().join("config.json"))?)?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    let applets = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(String::from)
        .collect();
    let soak = Soak {
        runner,
        state,
        work,
        prefix: format!("vksoak{}", std::process::id()),
        spec,
        applets,
    };
    let kind = |full: bool| if full { "full" } else { "plain" };
    // Warm-up: one cycle of each kind (one-time setup such as the cgroup parent).
    for full in [false, true] {
        soak.cycle(&format!("{}-warmup-{}", soak.prefix, kind(full)), full)
            .with_context(|| format!("warm-up {} cycle", kind(full)))?;
    }
    let base = soak.snapshot();
    let mut prev = base.clone();
    let (mut plain, mut fulls) = (KindDeltas::default(), KindDeltas::default());
    let (mut times, mut full_times) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    for i in 1..=cycles {
        let full = i % FULL_EVERY == 0;
        let id = format!("{}-{i}-{}", soak.prefix, kind(full));
        let took = soak
            .cycle(&id, full)
            .with_context(|| format!("cycle {i} ({})", kind(full)))?;
        let snap = soak.snapshot();
        let k = if full { &mut fulls } else { &mut plain };
        k.cycles += 1;
        for (what, items) in &snap {
            let was = prev.get(what).map_or(0, Vec::len);
            *k.delta.entry(what).or_default() += items.len() as i64 - was as i64;
        }
        prev = snap;
        let t = if full { &mut full_times } else { &mut times };
        t.push(took);
        if i % CHECK_EVERY == 0 || i == cycles {
            let mut growth = compare(&base, &prev);
            if !growth.is_empty() {
                // Give what is still ending a moment before calling it a leak.
                std::thread::sleep(Duration::from_millis(500));
                growth = compare(&base, &soak.snapshot());
            }
            if !growth.is_empty() {
                bail!(
                    "{}",
                    report(&growth, i, &[("plain", &plain), ("full", &fulls)])
                );
            }
            eprintln!(
                "soak containers: {i} cycles, {:.1} s, nothing grew",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = t0.elapsed();
    let all: Vec<Duration> = times.iter().chain(&full_times).copied().collect();
    println!(
        "soak containers: {cycles} cycles ({} plain, {} full) in {:.1} s; no leak \
         (checked every {CHECK_EVERY} cycles)",
        times.len(),
        full_times.len(),
        elapsed.as_secs_f64()
    );
    for (kind, t) in [("all", &all), ("plain", &times), ("full", &full_times)] {
        if !t.is_empty() {
            println!("  run + delete, {kind:<5}: {}", quantiles(t));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(items: &[(&'static str, &[&str])]) -> Snapshot {
        items
            .iter()
            .map(|(k, v)| (*k, v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn compare_finds_growth_only() {
        let before = snap(&[
            ("mounts", &["/ ext4", "/proc proc"]),
            ("soak fds", &["pipe:", "pipe:", "/dev/null"]),
            ("cgroup dirs", &["memory/virtkit/a"]),
            ("zombies", &[]),
        ]);
        // Same counts with other items (a container came and went): no growth.
        let same = snap(&[
            ("mounts", &["/ ext4", "/proc proc"]),
            ("soak fds", &["pipe:", "socket:", "/dev/null"]),
            ("cgroup dirs", &["memory/virtkit/b"]),
            ("zombies", &[]),
        ]);
        assert!(compare(&before, &same).is_empty());
        assert!(compare(&before, &before).is_empty());
        let after = snap(&[
            ("mounts", &["/ ext4"]),
            ("soak fds", &["pipe:", "pipe:", "pipe:", "/dev/null"]),
            (
                "cgroup dirs",
                &["memory/virtkit/a", "memory/virtkit/c", "pids/virtkit/c"],
            ),
            ("zombies", &["42 true Z ppid 1"]),
        ]);
        let g = compare(&before, &after);
        let whats: Vec<&str> = g.iter().map(|g| g.what).collect();
        assert_eq!(whats, ["cgroup dirs", "soak fds", "zombies"]);
        assert_eq!((g[0].before, g[0].after), (1, 3));
        assert_eq!(g[0].new, ["memory/virtkit/c", "pids/virtkit/c"]);
        // Duplicates count: the third pipe is new.
        assert_eq!(g[1].new, ["pipe:"]);
        // A resource missing from `before` counts from zero.
        let g = compare(&Snapshot::new(), &snap(&[("state dirs", &["x"])]));
        assert_eq!(g[0].before, 0);
        assert_eq!(g[0].new, ["x"]);
        let kinds = KindDeltas {
            cycles: 10,
            delta: [("state dirs", 1)].into_iter().collect(),
        };
        let r = report(&g, 100, &[("full", &kinds)]);
        assert!(r.contains("after 100 cycles") && r.contains("state dirs: 0 -> 1 (+1, 0.01"));
        assert!(r.contains("full cycles +1 over 10 (0.10 each)") && r.contains("new: x"));
    }

    #[test]
    fn quantiles_of_few() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(quantiles(&v), "p50 6.0 ms, p90 9.0 ms, max 10.0 ms");
    }
}
