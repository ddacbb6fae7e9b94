//! The cgroup v2 backend: one directory in the unified hierarchy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::convert;
use crate::detect::V2_CONTROLLERS;
use crate::error::{Error, Result};
use crate::fs;
use crate::resources::{FreezerState, Resources, Stats};
use crate::v1::{add_pid, collect_pids};
use crate::{normalize_path, poll_until, CgroupManager, CgroupVersion, DEFAULT_TIMEOUT};

/// A cgroup in the unified (v2) hierarchy.
#[derive(Debug, Clone)]
pub struct V2Manager {
    root: PathBuf,
    path: String,
    dir: PathBuf,
    timeout: Duration,
    cgroup_kill: bool,
}

impl V2Manager {
    /// A manager for `path` (e.g. `virtkit/<id>`) under the cgroup2 mount `root`.
    pub fn new(root: &Path, path: &str) -> Result<Self> {
        let path = normalize_path(path)?;
        Ok(V2Manager {
            root: root.to_path_buf(),
            dir: root.join(&path),
            path,
            timeout: DEFAULT_TIMEOUT,
            cgroup_kill: true,
        })
    }

    /// Sets how long freeze, thaw and kill wait (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether [`CgroupManager::kill_all`] may use `cgroup.kill` (default
    /// true; kernels before 5.14 lack the file and get the fallback anyway).
    /// `false` forces the fallback, signalling every pid until the cgroup is
    /// empty, to test or compare it.
    pub fn with_cgroup_kill(mut self, use_it: bool) -> Self {
        self.cgroup_kill = use_it;
        self
    }

    /// How many eBPF device programs are attached to the cgroup (1 after
    /// applying [`Resources::devices`]; 0 when none was ever applied).
    pub fn device_programs(&self) -> Result<usize> {
        crate::bpf::device_program_count(&self.dir)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Enables in `parent/cgroup.subtree_control` those of
    /// [`V2_CONTROLLERS`] that `parent/cgroup.controllers` offers and that are
    /// not enabled yet.
    fn enable_controllers(parent: &Path) -> Result<()> {
        let available = fs::read(&parent.join("cgroup.controllers"))?;
        let enabled = fs::read_opt(&parent.join("cgroup.subtree_control"))?.unwrap_or_default();
        let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
        let want: Vec<String> = available
            .split_whitespace()
            .filter(|c| V2_CONTROLLERS.contains(c) && !enabled.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if want.is_empty() {
            return Ok(());
        }
        let all = fs::write_in(parent, "cgroup.subtree_control", &want.join(" "));
        let busy = matches!(&all, Err(Error::Write { source, .. }) if source.raw_os_error() == Some(libc::EBUSY));
        // EBUSY: the parent holds processes ("no internal processes" rule);
        // only threaded controllers would go through, a half-working cgroup:
        // report it instead.
        if all.is_ok() || busy || want.len() == 1 {
            return all;
        }
        // One refusal fails the whole write (the cpu controller, say, while a
        // real-time task sits in a child): enable what can be, one by one, as
        // runc does. A resource needing a missing controller then fails with
        // its file named.
        let enabled = want
            .iter()
            .filter(|c| fs::write_in(parent, "cgroup.subtree_control", c).is_ok())
            .count();
        // None at all (a parent holding processes, say): the first error says why.
        if enabled == 0 {
            return all;
        }
        Ok(())
    }

    fn events_value(&self, key: &str) -> Result<Option<u64>> {
        let f = self.dir.join("cgroup.events");
        let text = fs::read(&f)?;
        fs::keyed_value(&f, &text, key)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let (value, what) = if frozen {
            ("1", "freezing")
        } else {
            ("0", "thawing")
        };
        fs::write_in(&self.dir, "cgroup.freeze", value)?;
        let want = u64::from(frozen);
        poll_until(what, &self.dir, self.timeout, |_| {
            Ok(self.events_value("frozen")? == Some(want))
        })
    }

    fn is_empty(&self) -> Result<bool> {
        // cgroup.events "populated" covers descendants; fall back to listing.
        match self.events_value("populated") {
            Ok(Some(p)) => Ok(p == 0),
            _ => Ok(self.pids()?.is_empty()),
        }
    }

    fn apply_memory(&self, r: &Resources) -> Result<()> {
        let m = &r.memory;
        let limit = m.limit.unwrap_or(0);
        let swap = m.swap.unwrap_or(0);
        let swap_v2 = convert::memory_swap_to_v2(swap, limit)?;
        // 0 from the conversion is "unset", except when memory + swap equals
        // memory: that asks for no swap at all, written as 0 (as runc does).
        if swap_v2 != 0 || swap > 0 {
            let v = convert::limit_to_v2(swap_v2);
            match fs::write_in(&self.dir, "memory.swap.max", &v) {
                // No swap accounting: "max" and "0" mean what the kernel does anyway.
                Err(Error::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && (v == "max" || v == "0") => {}
                other => other?,
            }
        }
        if limit != 0 {
            fs::write_in(&self.dir, "memory.max", &convert::limit_to_v2(limit))?;
        }
        if let Some(res) = m.reservation {
            fs::write_in(&self.dir, "memory.low", &convert::limit_to_v2(res))?;
        }
        Ok(())
    }

    fn apply_cpu(&self, r: &Resources) -> Result<()> {
        let c = &r.cpu;
        if let Some(s) = c.shares.filter(|s| *s != 0) {
            let w = convert::cpu_shares_to_weight(s);
            fs::write_in(&self.dir, "cpu.weight", &w.to_string())?;
        }
        if let Some(v) = convert::cpu_max(c.quota, c.period) {
            fs::write_in(&self.dir, "cpu.max", &v)?;
        }
        if let Some(b) = c.burst {
            fs::write_in(&self.dir, "cpu.max.burst", &b.to_string())?;
        }
        if let Some(i) = c.idle {
            fs::write_in(&self.dir, "cpu.idle", &i.to_string())?;
        }
        if let Some(cpus) = &c.cpus {
            fs::write_in(&self.dir, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = &c.mems {
            fs::write_in(&self.dir, "cpuset.mems", mems)?;
        }
        Ok(())
    }

    fn apply_io(&self, r: &Resources) -> Result<()> {
        let b = &r.block_io;
        if let Some(w) = b.weight.filter(|w| *w != 0) {
            if self.dir.join("io.weight").exists() {
                let v = convert::blkio_weight_to_io_weight(w);
                fs::write_in(&self.dir, "io.weight", &format!("default {v}"))?;
            } else {
                // BFQ only: io.bfq.weight takes the v1 range (1..=1000) as is.
                fs::write_in(&self.dir, "io.bfq.weight", &w.to_string())?;
            }
        }
        for wd in &b.weight_device {
            let v = convert::blkio_weight_to_io_weight(wd.weight);
            fs::write_in(&self.dir, "io.weight", &format!("{} {v}", wd.device))?;
        }
        let lists = [
            ("rbps", &b.throttle_read_bps_device),
            ("wbps", &b.throttle_write_bps_device),
            ("riops", &b.throttle_read_iops_device),
            ("wiops", &b.throttle_write_iops_device),
        ];
        for (key, list) in lists {
            for t in list {
                // 0 in OCI means no limit.
                let rate = if t.rate == 0 {
                    "max".to_string()
                } else {
                    t.rate.to_string()
                };
                fs::write_in(&self.dir, "io.max", &format!("{} {key}={rate}", t.device))?;
            }
        }
        Ok(())
    }
}

impl CgroupManager for V2Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn create(&self) -> Result<()> {
        let mut parent = self.root.clone();
        for comp in self.path.split('/') {
            Self::enable_controllers(&parent)?;
            let dir = parent.join(comp);
            if !dir.is_dir() {
                fs::mkdir_all(&dir)?;
            }
            parent = dir;
        }
        Ok(())
    }

    fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    fn add_process(&self, pid: i32) -> Result<()> {
        add_pid(&self.dir, pid)
    }

    fn join_self(&self) -> Result<()> {
        fs::write_in(&self.dir, "cgroup.procs", "0")
    }

    fn pids(&self) -> Result<Vec<i32>> {
        let mut all = BTreeSet::new();
        collect_pids(&self.dir, &mut all)?;
        Ok(all.into_iter().collect())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        r.validate()?;
        let v1_only = |field, what: &str| {
            Err(Error::InvalidResource {
                field,
                reason: format!("{what} does not exist on cgroup v2"),
            })
        };
        if r.memory.disable_oom_killer == Some(true) {
            return v1_only("memory.disable_oom_killer", "disabling the OOM killer");
        }
        if r.cpu.realtime_runtime.is_some() || r.cpu.realtime_period.is_some_and(|p| p != 0) {
            return v1_only("cpu.realtime_runtime", "real-time group scheduling");
        }
        // The swap conversion can fail too: check it before any write.
        convert::memory_swap_to_v2(r.memory.swap.unwrap_or(0), r.memory.limit.unwrap_or(0))?;
        if let Some(limit) = r.pids.limit.filter(|l| *l != 0) {
            fs::write_in(&self.dir, "pids.max", &convert::limit_to_v2(limit))?;
        }
        self.apply_memory(r)?;
        self.apply_cpu(r)?;
        self.apply_io(r)?;
        for (key, value) in &r.unified {
            fs::write_in(&self.dir, key, value)?;
        }
        if let Some(rules) = &r.devices {
            crate::bpf::set_device_rules(&self.dir, rules)?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        let d = &self.dir;
        s.memory.usage = fs::read_u64_opt(&d.join("memory.current"))?;
        s.memory.peak = fs::read_u64_opt(&d.join("memory.peak"))?;
        s.memory.limit = fs::read_u64_opt(&d.join("memory.max"))?;
        let ev = d.join("memory.events");
        if let Some(text) = fs::read_opt(&ev)? {
            s.memory.oom_kills = fs::keyed_value(&ev, &text, "oom_kill")?;
        }
        s.memory.swap_usage = fs::read_u64_opt(&d.join("memory.swap.current"))?;
        if let Some(text) = fs::read_opt(&d.join("memory.stat"))? {
            s.memory.stat = fs::keyed_map(&text);
        }
        s.pids.current = fs::read_u64_opt(&d.join("pids.current"))?;
        s.pids.limit = fs::read_u64_opt(&d.join("pids.max"))?;
        let io = d.join("io.stat");
        if let Some(text) = fs::read_opt(&io)? {
            s.io = fs::parse_io_stat(&io, &text)?;
        }
        let cs = d.join("cpu.stat");
        if let Some(text) = fs::read_opt(&cs)? {
            let us = |k| -> Result<Option<u64>> {
                Ok(fs::keyed_value(&cs, &text, k)?.map(|v| v.saturating_mul(1000)))
            };
            s.cpu.usage_ns = us("usage_usec")?;
            s.cpu.user_ns = us("user_usec")?;
            s.cpu.system_ns = us("system_usec")?;
            s.cpu.nr_periods = fs::keyed_value(&cs, &text, "nr_periods")?;
            s.cpu.nr_throttled = fs::keyed_value(&cs, &text, "nr_throttled")?;
            s.cpu.throttled_ns = us("throttled_usec")?;
        }
        Ok(s)
    }

    fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        Ok(match self.events_value("frozen")? {
            Some(1) => FreezerState::Frozen,
            _ => {
                let f = self.dir.join("cgroup.freeze");
                if fs::read_u64_opt(&f)? == Some(1) {
                    FreezerState::Freezing
                } else {
                    FreezerState::Thawed
                }
            }
        })
    }

    fn signal_all(&self, signal: i32) -> Result<()> {
        let was_frozen = self.freezer_state()? == FreezerState::Frozen;
        if !was_frozen {
            self.freeze()?;
        }
        let res = self
            .pids()
            .and_then(|pids| pids.into_iter().try_for_each(|p| fs::kill(p, signal)));
        if !was_frozen {
            self.thaw()?;
        }
        res
    }

    fn kill_all(&self) -> Result<()> {
        let kill_file = self.dir.join("cgroup.kill");
        if self.cgroup_kill && kill_file.exists() {
            if self.is_empty()? {
                return Ok(());
            }
            fs::write(&kill_file, "1")?;
            return poll_until("killing every process", &self.dir, self.timeout, |_| {
                self.is_empty()
            });
        }
        let can_freeze = self.dir.join("cgroup.freeze").exists();
        let mut signalled = BTreeSet::new();
        poll_until("killing every process", &self.dir, self.timeout, |_| {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(true);
            }
            if pids.iter().all(|p| signalled.contains(p)) {
                // Every task has its SIGKILL: wait for them to exit.
                return Ok(false);
            }
            // First round: signal at once. Later rounds met tasks forked in
            // between: freeze while signalling so no more escape (a frozen v2
            // task still dies of SIGKILL). Freezing is best effort.
            let freeze = can_freeze && !signalled.is_empty();
            if freeze {
                let _ = self.set_frozen(true);
            }
            let sent = pids.iter().try_for_each(|p| fs::kill(*p, libc::SIGKILL));
            signalled.extend(pids);
            if freeze {
                fs::write_in(&self.dir, "cgroup.freeze", "0")?;
            }
            sent?;
            Ok(false)
        })
    }

    fn delete(&self) -> Result<()> {
        fs::remove_cgroup_dir(&self.dir)
    }
}
