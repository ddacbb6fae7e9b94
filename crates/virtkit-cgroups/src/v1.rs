//! The cgroup v1 backend: one directory per controller hierarchy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::detect::{Hierarchies, V1_CONTROLLERS};
use crate::error::{Error, Result};
use crate::fs;
use crate::resources::{FreezerState, Resources, Stats, ThrottleDevice};
use crate::{normalize_path, poll_until, CgroupManager, CgroupVersion, DEFAULT_TIMEOUT};

/// A cgroup in the v1 hierarchies (used for the legacy and hybrid layouts).
#[derive(Debug, Clone)]
pub struct V1Manager {
    path: String,
    /// (controller, mount point) for each managed controller that is mounted.
    mounts: Vec<(String, PathBuf)>,
    timeout: Duration,
}

impl V1Manager {
    /// A manager for `path` (e.g. `virtkit/<id>`) under every mounted
    /// controller of [`V1_CONTROLLERS`] in `hier`.
    pub fn new(hier: &Hierarchies, path: &str) -> Result<Self> {
        let path = normalize_path(path)?;
        let mounts: Vec<(String, PathBuf)> = V1_CONTROLLERS
            .iter()
            .filter_map(|c| hier.v1_mount(c).map(|m| (c.to_string(), m.to_path_buf())))
            .collect();
        if mounts.is_empty() {
            return Err(Error::NoHierarchy("no v1 controller is mounted".into()));
        }
        Ok(V1Manager {
            path,
            mounts,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long freeze, thaw and kill wait (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The cgroup's directory in `controller`'s hierarchy, if mounted.
    pub fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        self.mounts
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, m)| m.join(&self.path))
    }

    fn need(&self, controller: &str, field: &'static str) -> Result<PathBuf> {
        self.controller_dir(controller)
            .ok_or_else(|| Error::MissingController {
                controller: controller.to_string(),
                field,
            })
    }

    /// (mount point, cgroup dir) pairs without duplicates (co-mounted
    /// controllers share a directory).
    fn unique_dirs(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut seen = BTreeSet::new();
        self.mounts
            .iter()
            .filter(|(_, m)| seen.insert(m.clone()))
            .map(|(_, m)| (m.clone(), m.join(&self.path)))
            .collect()
    }

    /// The directories whose `cgroup.procs` are listed: all of them, since a
    /// process may have been added to some hierarchies only.
    fn procs_dirs(&self) -> Vec<PathBuf> {
        self.unique_dirs().into_iter().map(|(_, d)| d).collect()
    }

    fn create_cpuset(&self, mount: &Path) -> Result<()> {
        // cpuset.cpus and cpuset.mems start empty in a new v1 cpuset cgroup,
        // and no task can join until they are set: copy them from the parent.
        // What a level holds (read, or just written) is what its child copies.
        const FILES: [&str; 2] = ["cpuset.cpus", "cpuset.mems"];
        let mut parent = mount.to_path_buf();
        let mut parent_values: [Option<String>; 2] = [None, None];
        for comp in self.path.split('/') {
            let dir = parent.join(comp);
            fs::mkdir_all(&dir)?;
            for (file, inherited) in FILES.iter().zip(parent_values.iter_mut()) {
                let mine = dir.join(file);
                let Some(cur) = fs::read_opt(&mine)? else {
                    *inherited = None;
                    continue;
                };
                if cur.trim().is_empty() {
                    let from_parent = match inherited.take() {
                        Some(v) => v,
                        None => fs::read(&parent.join(file))?.trim().to_string(),
                    };
                    fs::write(&mine, &from_parent)?;
                    *inherited = Some(from_parent);
                } else {
                    *inherited = Some(cur.trim().to_string());
                }
            }
            parent = dir;
        }
        Ok(())
    }

    fn set_freezer(&self, state: &'static str, what: &'static str) -> Result<()> {
        let dir = self.need("freezer", "freezer")?;
        let file = dir.join("freezer.state");
        poll_until(what, &dir, self.timeout, |i| {
            // Writing again is how a stuck FREEZING is retried (as runc does).
            if i % 4 == 0 {
                fs::write(&file, state)?;
            }
            Ok(fs::read(&file)?.trim() == state)
        })
    }

    fn apply_memory(&self, r: &Resources) -> Result<()> {
        let m = &r.memory;
        let any = m.limit.is_some_and(|v| v != 0)
            || m.swap.is_some_and(|v| v != 0)
            || m.reservation.is_some()
            || m.swappiness.is_some()
            || m.disable_oom_killer.is_some();
        if !any {
            return Ok(());
        }
        let dir = self.need("memory", "memory")?;
        let limit = m.limit.unwrap_or(0);
        let mut swap = m.swap.unwrap_or(0);
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if limit == -1 && swap == 0 && memsw.exists() {
            // Unlimited memory with swap unset means unlimited swap too (runc).
            swap = -1;
        }
        let write_limit = || fs::write_in(&dir, "memory.limit_in_bytes", &limit.to_string());
        let write_swap = || fs::write(&memsw, &swap.to_string());
        if limit != 0 && swap != 0 {
            // The kernel wants limit <= memsw at every moment: raise memsw first
            // when growing, lower the limit first when shrinking.
            let cur = fs::read_u64(&dir.join("memory.limit_in_bytes"))?;
            if swap == -1 || cur < u64::try_from(swap).unwrap_or(u64::MAX) {
                write_swap()?;
                write_limit()?;
            } else {
                write_limit()?;
                write_swap()?;
            }
        } else if limit != 0 {
            write_limit()?;
        } else if swap != 0 {
            write_swap()?;
        }
        if let Some(res) = m.reservation {
            fs::write_in(&dir, "memory.soft_limit_in_bytes", &res.to_string())?;
        }
        if let Some(sw) = m.swappiness {
            fs::write_in(&dir, "memory.swappiness", &sw.to_string())?;
        }
        if let Some(off) = m.disable_oom_killer {
            fs::write_in(&dir, "memory.oom_control", if off { "1" } else { "0" })?;
        }
        Ok(())
    }

    fn apply_cpu(&self, r: &Resources) -> Result<()> {
        let c = &r.cpu;
        if c.shares.is_some_and(|s| s != 0)
            || c.quota.is_some_and(|q| q != 0)
            || c.period.is_some_and(|p| p != 0)
            || c.burst.is_some()
            || c.idle.is_some()
            || c.realtime_runtime.is_some()
            || c.realtime_period.is_some_and(|p| p != 0)
        {
            let dir = self.need("cpu", "cpu")?;
            if let Some(s) = c.shares.filter(|s| *s != 0) {
                fs::write_in(&dir, "cpu.shares", &s.to_string())?;
            }
            if let Some(p) = c.period.filter(|p| *p != 0) {
                fs::write_in(&dir, "cpu.cfs_period_us", &p.to_string())?;
            }
            if let Some(q) = c.quota.filter(|q| *q != 0) {
                let q = if q < 0 { -1 } else { q };
                fs::write_in(&dir, "cpu.cfs_quota_us", &q.to_string())?;
            }
            if let Some(b) = c.burst {
                fs::write_in(&dir, "cpu.cfs_burst_us", &b.to_string())?;
            }
            if let Some(i) = c.idle {
                fs::write_in(&dir, "cpu.idle", &i.to_string())?;
            }
            // Period before runtime, as runc: the runtime is checked against it.
            if let Some(p) = c.realtime_period.filter(|p| *p != 0) {
                fs::write_in(&dir, "cpu.rt_period_us", &p.to_string())?;
            }
            if let Some(rt) = c.realtime_runtime {
                fs::write_in(&dir, "cpu.rt_runtime_us", &rt.to_string())?;
            }
        }
        if c.cpus.is_some() || c.mems.is_some() {
            let dir = self.need("cpuset", "cpu.cpus")?;
            if let Some(cpus) = &c.cpus {
                fs::write_in(&dir, "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = &c.mems {
                fs::write_in(&dir, "cpuset.mems", mems)?;
            }
        }
        Ok(())
    }

    fn apply_blkio(&self, r: &Resources) -> Result<()> {
        let b = &r.block_io;
        let throttles: [(&str, &Vec<ThrottleDevice>); 4] = [
            (
                "blkio.throttle.read_bps_device",
                &b.throttle_read_bps_device,
            ),
            (
                "blkio.throttle.write_bps_device",
                &b.throttle_write_bps_device,
            ),
            (
                "blkio.throttle.read_iops_device",
                &b.throttle_read_iops_device,
            ),
            (
                "blkio.throttle.write_iops_device",
                &b.throttle_write_iops_device,
            ),
        ];
        let any = b.weight.is_some_and(|w| w != 0)
            || !b.weight_device.is_empty()
            || throttles.iter().any(|(_, l)| !l.is_empty());
        if !any {
            return Ok(());
        }
        let dir = self.need("blkio", "block_io")?;
        // With the BFQ scheduler the weight files are blkio.bfq.*.
        let (weight_file, weight_dev_file) = if dir.join("blkio.weight").exists() {
            ("blkio.weight", "blkio.weight_device")
        } else {
            ("blkio.bfq.weight", "blkio.bfq.weight_device")
        };
        if let Some(w) = b.weight.filter(|w| *w != 0) {
            fs::write_in(&dir, weight_file, &w.to_string())?;
        }
        for wd in &b.weight_device {
            fs::write_in(
                &dir,
                weight_dev_file,
                &format!("{} {}", wd.device, wd.weight),
            )?;
        }
        for (file, list) in throttles {
            for t in list {
                fs::write_in(&dir, file, &format!("{} {}", t.device, t.rate))?;
            }
        }
        Ok(())
    }
}

impl CgroupManager for V1Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.unique_dirs().into_iter().map(|(_, d)| d).collect()
    }

    fn create(&self) -> Result<()> {
        for (mount, dir) in self.unique_dirs() {
            if self.controller_dir("cpuset").as_deref() == Some(dir.as_path()) {
                self.create_cpuset(&mount)?;
            } else {
                fs::mkdir_all(&dir)?;
            }
        }
        Ok(())
    }

    fn exists(&self) -> bool {
        self.unique_dirs().iter().all(|(_, d)| d.is_dir())
    }

    fn add_process(&self, pid: i32) -> Result<()> {
        for (_, dir) in self.unique_dirs() {
            add_pid(&dir, pid)?;
        }
        Ok(())
    }

    fn join_self(&self) -> Result<()> {
        for (_, dir) in self.unique_dirs() {
            fs::write_in(&dir, "tasks", "0")?;
        }
        Ok(())
    }

    fn pids(&self) -> Result<Vec<i32>> {
        let mut all = BTreeSet::new();
        for dir in self.procs_dirs() {
            collect_pids(&dir, &mut all)?;
        }
        Ok(all.into_iter().collect())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        if !r.unified.is_empty() {
            return Err(Error::InvalidResource {
                field: "unified",
                reason: "raw cgroup v2 files cannot be set on cgroup v1".into(),
            });
        }
        r.validate()?;
        if let Some(limit) = r.pids.limit.filter(|l| *l != 0) {
            let dir = self.need("pids", "pids.limit")?;
            let v = if limit < 0 {
                "max".to_string()
            } else {
                limit.to_string()
            };
            fs::write_in(&dir, "pids.max", &v)?;
        }
        self.apply_memory(r)?;
        self.apply_cpu(r)?;
        self.apply_blkio(r)?;
        if let Some(rules) = &r.devices {
            let dir = self.need("devices", "devices")?;
            // Each rule is one write(2); the two files stay open for the whole list.
            let mut deny = fs::ControlFile::open(&dir.join("devices.deny"))?;
            let mut allow = fs::ControlFile::open(&dir.join("devices.allow"))?;
            deny.write_line("a")?;
            for rule in rules {
                let file = if rule.allow { &mut allow } else { &mut deny };
                file.write_line(&rule.v1_line())?;
            }
        }
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        if let Some(dir) = self.controller_dir("memory") {
            s.memory.usage = fs::read_u64_opt(&dir.join("memory.usage_in_bytes"))?;
            s.memory.peak = fs::read_u64_opt(&dir.join("memory.max_usage_in_bytes"))?;
            s.memory.limit = fs::read_u64_opt(&dir.join("memory.limit_in_bytes"))?;
            let oc = dir.join("memory.oom_control");
            if let Some(text) = fs::read_opt(&oc)? {
                s.memory.oom_kills = fs::keyed_value(&oc, &text, "oom_kill")?;
            }
            let memsw = fs::read_u64_opt(&dir.join("memory.memsw.usage_in_bytes"))?;
            if let (Some(both), Some(mem)) = (memsw, s.memory.usage) {
                s.memory.swap_usage = Some(both.saturating_sub(mem));
            }
            if let Some(text) = fs::read_opt(&dir.join("memory.stat"))? {
                s.memory.stat = fs::keyed_map(&text);
            }
        }
        if let Some(dir) = self.controller_dir("pids") {
            s.pids.current = fs::read_u64_opt(&dir.join("pids.current"))?;
            s.pids.limit = fs::read_u64_opt(&dir.join("pids.max"))?;
        }
        if let Some(dir) = self.controller_dir("cpuacct") {
            s.cpu.usage_ns = fs::read_u64_opt(&dir.join("cpuacct.usage"))?;
            s.cpu.user_ns = fs::read_u64_opt(&dir.join("cpuacct.usage_user"))?;
            s.cpu.system_ns = fs::read_u64_opt(&dir.join("cpuacct.usage_sys"))?;
        }
        if let Some(dir) = self.controller_dir("blkio") {
            let bf = dir.join("blkio.throttle.io_service_bytes_recursive");
            let inf = dir.join("blkio.throttle.io_serviced_recursive");
            if let (Some(b), Some(i)) = (fs::read_opt(&bf)?, fs::read_opt(&inf)?) {
                s.io = fs::parse_blkio_stats((&bf, &b), (&inf, &i))?;
            }
        }
        if let Some(dir) = self.controller_dir("cpu") {
            let f = dir.join("cpu.stat");
            if let Some(text) = fs::read_opt(&f)? {
                s.cpu.nr_periods = fs::keyed_value(&f, &text, "nr_periods")?;
                s.cpu.nr_throttled = fs::keyed_value(&f, &text, "nr_throttled")?;
                s.cpu.throttled_ns = fs::keyed_value(&f, &text, "throttled_time")?;
            }
        }
        Ok(s)
    }

    fn freeze(&self) -> Result<()> {
        self.set_freezer("FROZEN", "freezing")
    }

    fn thaw(&self) -> Result<()> {
        self.set_freezer("THAWED", "thawing")
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        let f = self.need("freezer", "freezer")?.join("freezer.state");
        let text = fs::read(&f)?;
        parse_freezer_state(&f, &text)
    }

    fn signal_all(&self, signal: i32) -> Result<()> {
        let has_freezer = self.controller_dir("freezer").is_some();
        let was_frozen = has_freezer && self.freezer_state()? == FreezerState::Frozen;
        if has_freezer && !was_frozen {
            self.freeze()?;
        }
        let res = self
            .pids()
            .and_then(|pids| pids.into_iter().try_for_each(|p| fs::kill(p, signal)));
        if has_freezer && !was_frozen {
            self.thaw()?;
        }
        res
    }

    fn kill_all(&self) -> Result<()> {
        let dir = self.procs_dirs().into_iter().next().unwrap_or_default();
        let has_freezer = self.controller_dir("freezer").is_some();
        if self.pids()?.is_empty() {
            return Ok(());
        }
        // Frozen v1 tasks do not act on SIGKILL: run them first.
        if has_freezer && self.freezer_state()? != FreezerState::Thawed {
            self.thaw()?;
        }
        let mut signalled = BTreeSet::new();
        poll_until("killing every process", &dir, self.timeout, |_| {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(true);
            }
            if pids.iter().all(|p| signalled.contains(p)) {
                // Every task has its SIGKILL: wait for them to exit.
                return Ok(false);
            }
            // The first round signals at once (a killed task cannot fork, and
            // most cgroups empty here). Tasks seen later were forked in
            // between: those rounds freeze the cgroup while signalling, so
            // nothing else escapes.
            let freeze = has_freezer && !signalled.is_empty();
            if freeze {
                self.freeze()?;
            }
            let sent = pids.iter().try_for_each(|p| fs::kill(*p, libc::SIGKILL));
            signalled.extend(pids);
            // SIGKILL takes effect only once the tasks run again.
            if freeze {
                self.thaw()?;
            }
            sent?;
            Ok(false)
        })
    }

    fn delete(&self) -> Result<()> {
        for (_, dir) in self.unique_dirs() {
            fs::remove_cgroup_dir(&dir)?;
        }
        Ok(())
    }
}

/// Parses v1 `freezer.state`: THAWED, FREEZING or FROZEN.
pub(crate) fn parse_freezer_state(path: &Path, text: &str) -> Result<FreezerState> {
    match text.trim() {
        "THAWED" => Ok(FreezerState::Thawed),
        "FREEZING" => Ok(FreezerState::Freezing),
        "FROZEN" => Ok(FreezerState::Frozen),
        _ => Err(Error::Parse {
            path: path.to_path_buf(),
            content: text.chars().take(200).collect(),
            reason: "expected THAWED, FREEZING or FROZEN".into(),
        }),
    }
}

/// Writes `pid` to `dir/cgroup.procs`, retrying EINVAL a few times (a task
/// still being created reads as EINVAL, as runc notes).
pub(crate) fn add_pid(dir: &Path, pid: i32) -> Result<()> {
    if pid <= 0 {
        return Err(Error::InvalidResource {
            field: "pid",
            reason: format!("{pid} is not a process id"),
        });
    }
    let file = dir.join("cgroup.procs");
    let mut tries = 0;
    loop {
        match fs::write(&file, &pid.to_string()) {
            Err(Error::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && tries < 5 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            other => return other,
        }
    }
}

/// Collects the pids of `dir` and its descendants. A missing directory has none.
pub(crate) fn collect_pids(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    match fs::read_pids(&procs) {
        Ok(pids) => out.extend(pids),
        // No directory (or no cgroup.procs in it): no processes.
        Err(Error::Read { source, .. })
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
        {
            if !dir.is_dir() {
                return Ok(());
            }
        }
        Err(e) => return Err(e),
    }
    for child in fs::child_dirs(dir)? {
        collect_pids(&child, out)?;
    }
    Ok(())
}
