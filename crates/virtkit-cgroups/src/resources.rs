//! What can be applied to a cgroup ([`Resources`]) and read back ([`Stats`]).
//!
//! [`Resources`] follows the OCI runtime spec's `linux.resources` (v1 terms
//! and units: shares, µs, bytes, -1 for unlimited), so an OCI runtime fills it
//! field by field; the v2 backend converts with [`crate::convert`].

use std::collections::BTreeMap;
use std::fmt;

use crate::convert;
use crate::devices::DeviceRule;
use crate::error::{Error, Result};

/// A block device number, `major:minor` (as in `/proc/partitions` or
/// `ls -l /dev/vda`), used by block I/O weights and throttles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceNumber {
    /// The major number.
    pub major: u64,
    /// The minor number.
    pub minor: u64,
}

impl DeviceNumber {
    /// A device number from its major and minor parts.
    pub const fn new(major: u64, minor: u64) -> Self {
        DeviceNumber { major, minor }
    }
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Memory limits. Bytes; -1 means unlimited; 0 (or `None`) leaves the value
/// unchanged, as in runc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryResources {
    /// Hard limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub limit: Option<i64>,
    /// Soft limit / protection (v1 `memory.soft_limit_in_bytes`, v2 `memory.low`).
    pub reservation: Option<i64>,
    /// Memory **plus** swap limit, OCI semantics (v1
    /// `memory.memsw.limit_in_bytes`; v2 `memory.swap.max` gets swap − limit).
    pub swap: Option<i64>,
    /// v1 `memory.swappiness` (0..=100); ignored on v2 (no such knob), as runc does.
    pub swappiness: Option<u64>,
    /// v1 `memory.oom_control`: true makes tasks wait at the limit instead of
    /// being OOM-killed. cgroup v2 has no such switch: `Some(true)` is an error there.
    pub disable_oom_killer: Option<bool>,
}

/// CPU bandwidth, weight and placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuResources {
    /// Relative weight in v1 shares (2..=262144, default 1024); v2 gets
    /// `cpu.weight` from [`crate::convert::cpu_shares_to_weight`]. 0 is unset.
    pub shares: Option<u64>,
    /// CFS quota in µs per period; -1 means unlimited, 0 is unset.
    pub quota: Option<i64>,
    /// CFS period in µs (default 100000); 0 is unset. On v2 quota and
    /// period share `cpu.max`: a period without a quota writes "max PERIOD",
    /// as runc does.
    pub period: Option<u64>,
    /// CFS burst in µs (v1 `cpu.cfs_burst_us`, v2 `cpu.max.burst`).
    pub burst: Option<u64>,
    /// SCHED_IDLE for the group: 1 on, 0 off (`cpu.idle`, kernel ≥ 5.15).
    pub idle: Option<i64>,
    /// Real-time runtime in µs per real-time period (v1 `cpu.rt_runtime_us`,
    /// needs CONFIG_RT_GROUP_SCHED); not available on v2.
    pub realtime_runtime: Option<i64>,
    /// Real-time period in µs (v1 `cpu.rt_period_us`); not available on v2.
    pub realtime_period: Option<u64>,
    /// Allowed CPUs, a list like "0-1,3" (`cpuset.cpus`).
    pub cpus: Option<String>,
    /// Allowed memory nodes, a list like "0" (`cpuset.mems`).
    pub mems: Option<String>,
}

/// Process number limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsResources {
    /// Maximum number of tasks; negative means unlimited ("max"); 0 is unset.
    pub limit: Option<i64>,
}

/// A per-device weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightDevice {
    /// The device.
    pub device: DeviceNumber,
    /// Its weight in v1 terms (10..=1000).
    pub weight: u16,
}

/// A per-device throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleDevice {
    /// The device.
    pub device: DeviceNumber,
    /// Bytes per second or I/O operations per second, depending on the list.
    pub rate: u64,
}

/// Block I/O weight and throttles (v1 blkio, v2 io).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockIoResources {
    /// Default weight in v1 terms (10..=1000); v2 gets `io.weight` from
    /// [`crate::convert::blkio_weight_to_io_weight`]. 0 is unset.
    pub weight: Option<u16>,
    /// Per-device weights.
    pub weight_device: Vec<WeightDevice>,
    /// Read bytes/s limits.
    pub throttle_read_bps_device: Vec<ThrottleDevice>,
    /// Write bytes/s limits.
    pub throttle_write_bps_device: Vec<ThrottleDevice>,
    /// Read IO/s limits.
    pub throttle_read_iops_device: Vec<ThrottleDevice>,
    /// Write IO/s limits.
    pub throttle_write_iops_device: Vec<ThrottleDevice>,
}

/// Everything [`crate::CgroupManager::apply`] can set. Every field is
/// optional; unset fields leave the cgroup's current value alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory limits.
    pub memory: MemoryResources,
    /// CPU limits and placement.
    pub cpu: CpuResources,
    /// Task limit.
    pub pids: PidsResources,
    /// Block I/O.
    pub block_io: BlockIoResources,
    /// Raw v2 files to write (OCI `linux.resources.unified`), file name → value.
    /// Rejected on v1.
    pub unified: BTreeMap<String, String>,
    /// Device access policy (OCI `linux.resources.devices`): `None` leaves
    /// it alone; `Some(rules)` replaces it — v1 writes "a" to `devices.deny`
    /// then each rule in order; v2 attaches an eBPF device program built from
    /// the rules (see [`crate::devices`]) and detaches the previous ones.
    pub devices: Option<Vec<DeviceRule>>,
}

impl Resources {
    /// Checks what can be checked without the kernel: cpu shares in
    /// 2..=262144, swappiness ≤ 100, memory + swap ≥ memory, block I/O
    /// weights in 10..=1000, and `unified` keys being plain file names.
    /// [`crate::CgroupManager::apply`] calls it before writing anything, so a
    /// bad value leaves the cgroup untouched.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::InvalidResource { field, reason });
        if let Some(s) = self.cpu.shares.filter(|s| *s != 0) {
            if !(convert::CPU_SHARES_MIN..=convert::CPU_SHARES_MAX).contains(&s) {
                return bad("cpu.shares", format!("{s} is outside 2..=262144"));
            }
        }
        if let Some(idle) = self.cpu.idle.filter(|i| !(0..=1).contains(i)) {
            return bad("cpu.idle", format!("{idle} is neither 0 nor 1"));
        }
        if let Some(sw) = self.memory.swappiness.filter(|s| *s > 100) {
            return bad("memory.swappiness", format!("{sw} is above 100"));
        }
        let limit = self.memory.limit.unwrap_or(0);
        let swap = self.memory.swap.unwrap_or(0);
        if limit < -1 {
            return bad(
                "memory.limit",
                format!("{limit} is negative (only -1, unlimited, is allowed)"),
            );
        }
        if swap < -1 {
            return bad(
                "memory.swap",
                format!("{swap} is negative (only -1, unlimited, is allowed)"),
            );
        }
        if swap > 0 && limit > 0 && swap < limit {
            return bad(
                "memory.swap",
                format!("memory + swap limit {swap} is below the memory limit {limit}"),
            );
        }
        let weights = self
            .block_io
            .weight
            .iter()
            .chain(self.block_io.weight_device.iter().map(|w| &w.weight));
        for w in weights {
            if *w != 0 && !(10..=1000).contains(w) {
                return bad("block_io.weight", format!("{w} is outside 10..=1000"));
            }
        }
        for key in self.unified.keys() {
            if key.is_empty() || key.contains('/') || key.starts_with('.') || key.contains('\0') {
                return bad("unified", format!("{key:?} is not a cgroup file name"));
            }
        }
        Ok(())
    }
}

/// Memory statistics. Bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Current usage (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: Option<u64>,
    /// Peak usage (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`, kernel ≥ 5.19).
    pub peak: Option<u64>,
    /// The hard limit in force (`u64::MAX` when unlimited).
    pub limit: Option<u64>,
    /// How many processes the OOM killer killed in this cgroup (v1
    /// `memory.oom_control` oom_kill, v2 `memory.events` oom_kill).
    pub oom_kills: Option<u64>,
    /// Swap in use: v2 `memory.swap.current`; v1 memsw usage minus usage.
    pub swap_usage: Option<u64>,
    /// Every counter of `memory.stat` (`cache`, `rss`, `anon`, `file`,
    /// `pgfault`...; the names differ between v1 and v2).
    pub stat: BTreeMap<String, u64>,
}

/// Task statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsStats {
    /// Current number of tasks (`pids.current`).
    pub current: Option<u64>,
    /// The limit in force (`u64::MAX` when "max").
    pub limit: Option<u64>,
}

/// CPU statistics. Nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Total CPU time consumed (v1 `cpuacct.usage`, v2 cpu.stat `usage_usec`).
    pub usage_ns: Option<u64>,
    /// User CPU time.
    pub user_ns: Option<u64>,
    /// System CPU time.
    pub system_ns: Option<u64>,
    /// Enforcement periods elapsed with the group runnable.
    pub nr_periods: Option<u64>,
    /// Periods in which the group was throttled.
    pub nr_throttled: Option<u64>,
    /// Total time throttled.
    pub throttled_ns: Option<u64>,
}

/// Block I/O done by the cgroup on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoDeviceStats {
    /// The device.
    pub device: DeviceNumber,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub read_ios: u64,
    /// Write operations.
    pub write_ios: u64,
}

/// What [`crate::CgroupManager::stats`] returns. Fields whose file or
/// controller is missing are `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory.
    pub memory: MemoryStats,
    /// Tasks.
    pub pids: PidsStats,
    /// CPU.
    pub cpu: CpuStats,
    /// Block I/O per device, sorted by device (v1
    /// `blkio.throttle.io_service{d,_bytes}_recursive`, v2 `io.stat`).
    pub io: Vec<IoDeviceStats>,
}

/// The freezer state of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    /// Running normally.
    Thawed,
    /// Freezing in progress (v1 only).
    Freezing,
    /// Every task is frozen.
    Frozen,
}
