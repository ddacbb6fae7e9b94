//! A fake cgroupfs for tests: a tempdir laid out as a v1 or v2 hierarchy, with
//! the control files the kernel would create (behind the `test-utils` feature).
//!
//! Plain files do not react like kernel ones: a write replaces the content
//! (io.max and blkio throttle files keep only the last line written), and
//! nothing updates `cgroup.events` or statistics unless the test writes them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::detect::{CgroupVersion, Hierarchies, V1_CONTROLLERS};

/// A temporary directory laid out as cgroup v1 or v2 (removed on drop).
#[derive(Debug)]
pub struct FakeCgroupFs {
    dir: tempfile::TempDir,
    version: CgroupVersion,
}

const COMMON_V1: &[(&str, &str)] = &[("cgroup.procs", ""), ("tasks", "")];

fn v1_files(controller: &str, is_root: bool) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<(&str, &str)> = COMMON_V1.to_vec();
    let unlimited = "9223372036854771712\n";
    v.extend_from_slice(match controller {
        "cpu" => &[
            ("cpu.shares", "1024\n"),
            ("cpu.cfs_period_us", "100000\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_burst_us", "0\n"),
            ("cpu.idle", "0\n"),
            ("cpu.rt_period_us", "1000000\n"),
            ("cpu.rt_runtime_us", "0\n"),
            (
                "cpu.stat",
                "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
            ),
        ][..],
        "cpuacct" => &[
            ("cpuacct.usage", "0\n"),
            ("cpuacct.usage_user", "0\n"),
            ("cpuacct.usage_sys", "0\n"),
        ][..],
        "memory" => &[
            ("memory.usage_in_bytes", "0\n"),
            ("memory.max_usage_in_bytes", "0\n"),
            ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
            ("memory.swappiness", "60\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            ),
        ][..],
        "pids" if !is_root => &[("pids.max", "max\n"), ("pids.current", "0\n")][..],
        "blkio" => &[
            ("blkio.weight", "100\n"),
            ("blkio.weight_device", ""),
            ("blkio.throttle.read_bps_device", ""),
            ("blkio.throttle.write_bps_device", ""),
            ("blkio.throttle.read_iops_device", ""),
            ("blkio.throttle.write_iops_device", ""),
        ][..],
        "freezer" if !is_root => &[("freezer.state", "THAWED\n")][..],
        "devices" => &[
            ("devices.list", "a *:* rwm\n"),
            ("devices.allow", ""),
            ("devices.deny", ""),
        ][..],
        _ => &[][..],
    });
    if controller == "memory" {
        v.push(("memory.limit_in_bytes", unlimited));
        v.push(("memory.memsw.limit_in_bytes", unlimited));
    }
    if controller == "cpuset" {
        if is_root {
            v.push(("cpuset.cpus", "0-1\n"));
            v.push(("cpuset.mems", "0\n"));
        } else {
            v.push(("cpuset.cpus", "\n"));
            v.push(("cpuset.mems", "\n"));
        }
    }
    v
}

fn v2_files(is_root: bool) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n"),
        ("cgroup.subtree_control", "\n"),
        ("cgroup.procs", ""),
        ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
    ];
    if !is_root {
        v.extend_from_slice(&[
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.freeze", "0\n"),
            ("cgroup.kill", ""),
            ("memory.max", "max\n"),
            ("memory.low", "0\n"),
            ("memory.swap.max", "max\n"),
            ("memory.current", "0\n"),
            ("memory.peak", "0\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            ("cpu.weight", "100\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.max.burst", "0\n"),
            ("cpu.idle", "0\n"),
            ("cpuset.cpus", "\n"),
            ("cpuset.mems", "\n"),
            ("pids.max", "max\n"),
            ("pids.current", "0\n"),
            ("io.weight", "default 100\n"),
            ("io.max", ""),
        ]);
    }
    v
}

fn write_missing(dir: &Path, files: &[(&str, &str)]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, content) in files {
        let p = dir.join(name);
        if !p.exists() {
            fs::write(p, content)?;
        }
    }
    Ok(())
}

impl FakeCgroupFs {
    /// A v1 tree: `root/<controller>/` for each of [`V1_CONTROLLERS`].
    pub fn v1() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        for c in V1_CONTROLLERS {
            write_missing(&dir.path().join(c), &v1_files(c, true))?;
        }
        Ok(FakeCgroupFs {
            dir,
            version: CgroupVersion::V1,
        })
    }

    /// A v2 tree: the unified hierarchy at `root`.
    pub fn v2() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        write_missing(dir.path(), &v2_files(true))?;
        Ok(FakeCgroupFs {
            dir,
            version: CgroupVersion::V2,
        })
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The hierarchies to hand to [`crate::open`] or the managers.
    pub fn hierarchies(&self) -> Hierarchies {
        match self.version {
            CgroupVersion::V1 => Hierarchies::v1_at(self.root()),
            CgroupVersion::V2 => Hierarchies::v2_at(self.root()),
        }
    }

    /// Does what the kernel does on mkdir: creates the cgroup `path` (and
    /// parents) with their control files, in every hierarchy. Existing files
    /// are kept.
    pub fn populate(&self, path: &str) -> io::Result<()> {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        match self.version {
            CgroupVersion::V1 => {
                for c in V1_CONTROLLERS {
                    let mut d = self.root().join(c);
                    for comp in &comps {
                        d.push(comp);
                        write_missing(&d, &v1_files(c, false))?;
                    }
                }
            }
            CgroupVersion::V2 => {
                let mut d = self.root().to_path_buf();
                for comp in &comps {
                    d.push(comp);
                    write_missing(&d, &v2_files(false))?;
                }
            }
        }
        Ok(())
    }

    /// The absolute path of `rel` inside the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Reads the file `rel` (relative to the root), trimmed.
    pub fn read(&self, rel: &str) -> io::Result<String> {
        Ok(fs::read_to_string(self.path(rel))?.trim().to_string())
    }

    /// Writes the file `rel` (relative to the root), as the kernel would
    /// update a statistic.
    pub fn write(&self, rel: &str, content: &str) -> io::Result<()> {
        fs::write(self.path(rel), content)
    }
}
