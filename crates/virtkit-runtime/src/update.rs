//! `update`: new resource limits for a running container, from an OCI
//! `linux.resources` document, from runc's individual flags ([`UpdateFlags`]), or both
//! (the flags win).

use oci_spec::runtime::{LinuxPids, LinuxResources};

use crate::cgroup;
use crate::error::{bail, Context, Result};
use crate::Runtime;

/// runc `update`'s individual flags; `None` leaves a value as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateFlags {
    /// `--memory`: the memory limit in bytes (-1: none).
    pub memory: Option<i64>,
    /// `--memory-reservation`: the soft limit in bytes.
    pub memory_reservation: Option<i64>,
    /// `--memory-swap`: memory plus swap in bytes (-1: unlimited swap).
    pub memory_swap: Option<i64>,
    /// `--cpu-share`: the relative CPU weight (cgroup v1 shares).
    pub cpu_shares: Option<u64>,
    /// `--cpu-period`: the CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// `--cpu-quota`: the CFS quota in microseconds per period (-1: none).
    pub cpu_quota: Option<i64>,
    /// `--cpu-rt-period`: the real-time period in microseconds.
    pub cpu_rt_period: Option<u64>,
    /// `--cpu-rt-runtime`: the real-time runtime in microseconds.
    pub cpu_rt_runtime: Option<i64>,
    /// `--cpuset-cpus`: the CPUs allowed, as `0-2,4`.
    pub cpuset_cpus: Option<String>,
    /// `--cpuset-mems`: the memory nodes allowed.
    pub cpuset_mems: Option<String>,
    /// `--pids-limit`: the most processes (0 or less: no limit).
    pub pids_limit: Option<i64>,
    /// `--blkio-weight`: the block I/O weight, 10 to 1000.
    pub blkio_weight: Option<u16>,
}

impl UpdateFlags {
    /// Whether no flag is set.
    pub fn is_empty(&self) -> bool {
        *self == UpdateFlags::default()
    }

    /// Sets the flags' values over `r`, as runc does after reading `--resources`.
    pub fn apply_to(&self, r: &mut LinuxResources) -> Result<()> {
        if let Some(w) = self.blkio_weight {
            if !(10..=1000).contains(&w) {
                bail!("--blkio-weight {w}: must be between 10 and 1000");
            }
        }
        let mem_flags = [self.memory, self.memory_reservation, self.memory_swap];
        if mem_flags.iter().any(Option::is_some) {
            let mut m = r.memory().unwrap_or_default();
            if let Some(v) = self.memory {
                m.set_limit(Some(v));
            }
            if let Some(v) = self.memory_reservation {
                m.set_reservation(Some(v));
            }
            if let Some(v) = self.memory_swap {
                m.set_swap(Some(v));
            }
            r.set_memory(Some(m));
        }
        let cpu_set = self.cpu_shares.is_some()
            || self.cpu_period.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_rt_period.is_some()
            || self.cpu_rt_runtime.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some();
        if cpu_set {
            let mut c = r.cpu().clone().unwrap_or_default();
            if let Some(v) = self.cpu_shares {
                c.set_shares(Some(v));
            }
            if let Some(v) = self.cpu_period {
                c.set_period(Some(v));
            }
            if let Some(v) = self.cpu_quota {
                c.set_quota(Some(v));
            }
            if let Some(v) = self.cpu_rt_period {
                c.set_realtime_period(Some(v));
            }
            if let Some(v) = self.cpu_rt_runtime {
                c.set_realtime_runtime(Some(v));
            }
            if let Some(v) = &self.cpuset_cpus {
                c.set_cpus(Some(v.clone()));
            }
            if let Some(v) = &self.cpuset_mems {
                c.set_mems(Some(v.clone()));
            }
            r.set_cpu(Some(c));
        }
        if let Some(v) = self.pids_limit {
            let mut p = LinuxPids::default();
            p.set_limit(v);
            r.set_pids(Some(p));
        }
        if let Some(w) = self.blkio_weight {
            let mut b = r.block_io().clone().unwrap_or_default();
            b.set_weight(Some(w));
            r.set_block_io(Some(b));
        }
        Ok(())
    }
}

/// A size as runc's and Docker's flags take it: bytes, or a number with a suffix `b`,
/// `k`, `m`, `g`, `t` (binary multiples; `kb`, `MiB`-style spellings too); `-1` means
/// no limit.
pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => bail!("invalid size {s:?}: unknown unit {unit:?}"),
    };
    let n: i64 = digits
        .parse()
        .with_context(|| format!("invalid size {s:?}"))?;
    if n < 0 {
        bail!("invalid size {s:?}: negative");
    }
    n.checked_mul(1i64 << shift)
        .with_context(|| format!("invalid size {s:?}: too large"))
}

impl Runtime {
    /// `update --resources`: applies `resources_json` (an OCI `linux.resources`
    /// object) to container `id`'s cgroup.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let r: LinuxResources =
            serde_json::from_slice(resources_json).context("parse resources JSON")?;
        self.update_resources(id, &r)
    }

    /// `update`: applies `r` to container `id`'s cgroup. Devices are left as they are
    /// (runc's `update` does not change the device policy).
    pub fn update_resources(&self, id: &str, r: &LinuxResources) -> Result<()> {
        let c = self.load(id)?;
        let resources = cgroup::update_resources(r)?;
        self.host()
            .cgroup(&c.saved.cgroup_path)?
            .apply(&resources)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_runc_takes_them() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("-1").unwrap(), -1);
        for bad in ["", "m", "12q", "-5", "1.5g", "99999999999t"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_override_the_document_and_leave_the_rest() {
        let mut r: LinuxResources = serde_json::from_str(
            r#"{"memory": {"limit": 100, "reservation": 50}, "cpu": {"shares": 512}}"#,
        )
        .unwrap();
        let f = UpdateFlags {
            memory: Some(200),
            cpu_quota: Some(50_000),
            pids_limit: Some(64),
            ..UpdateFlags::default()
        };
        f.apply_to(&mut r).unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!((m.limit(), m.reservation()), (Some(200), Some(50)));
        let c = r.cpu().as_ref().unwrap();
        assert_eq!((c.shares(), c.quota()), (Some(512), Some(50_000)));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 64);
        assert!(r.block_io().is_none());
        assert!(UpdateFlags::default().is_empty());
        let bad = UpdateFlags {
            blkio_weight: Some(5),
            ..UpdateFlags::default()
        };
        assert!(bad.apply_to(&mut r).is_err());
    }
}
