//! Where and how the container's process runs, beyond its identity: I/O priority
//! (`process.ioPriority`), CPU scheduler (`process.scheduler`), CPU affinity
//! (`process.execCPUAffinity`), NUMA memory policy (`linux.memoryPolicy`) and execution
//! domain (`linux.personality`). Read from the config into plain values first, so a bad
//! value is an error before anything starts; then applied by init (or exec's process)
//! with one system call each.

use oci_spec::runtime::{
    IOPriorityClass, Linux, LinuxPersonalityDomain, LinuxSchedulerFlag, LinuxSchedulerPolicy,
    MemoryPolicyFlagType, MemoryPolicyModeType, Process,
};

use crate::error::{bail, err, Context, Result};

/// `struct sched_attr` of `sched_setattr(2)` (the first 48 bytes, without util clamps).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// A NUMA policy for `set_mempolicy(2)`: mode with its flags, and the node mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemPolicy {
    mode: i32,
    mask: Vec<u64>,
}

/// The process attributes of this module, ready to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    ioprio: Option<i32>,
    sched: Option<SchedAttr>,
    affinity_initial: Option<Vec<usize>>,
    affinity_final: Option<Vec<usize>>,
    mempolicy: Option<MemPolicy>,
    personality: Option<libc::c_ulong>,
}

/// The most CPUs and NUMA nodes a list may name.
const MAX_IDS: usize = 1024;

/// Parses a CPU or node list such as `0-3,7` (as the kernel prints them).
pub(crate) fn parse_id_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a
            .trim()
            .parse()
            .with_context(|| format!("invalid list {s:?}"))?;
        let b: usize = b
            .trim()
            .parse()
            .with_context(|| format!("invalid list {s:?}"))?;
        if a > b || b >= MAX_IDS {
            bail!("invalid list {s:?}: range {part} (ids below {MAX_IDS})");
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        bail!("invalid list {s:?}: empty");
    }
    Ok(out)
}

fn ioprio(p: &Process) -> Result<Option<i32>> {
    let Some(io) = p.io_priority() else {
        return Ok(None);
    };
    let class = match io.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let prio = io.priority();
    if !(0..=7).contains(&prio) {
        bail!("process.ioPriority.priority {prio}: must be 0 to 7");
    }
    Ok(Some((class << 13) | prio as i32))
}

fn sched(p: &Process) -> Result<Option<SchedAttr>> {
    let Some(s) = p.scheduler() else {
        return Ok(None);
    };
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => bail!("process.scheduler: SCHED_ISO is not in Linux"),
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            other => bail!("process.scheduler: flag {other:?} needs utilization clamps, which are not supported"),
        };
    }
    let nice = s.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        bail!("process.scheduler.nice {nice}: must be -20 to 19");
    }
    let priority = s.priority().unwrap_or(0);
    let realtime = matches!(policy, 1 | 2);
    if realtime && !(1..=99).contains(&priority) || !realtime && priority != 0 {
        bail!("process.scheduler.priority {priority}: 1 to 99 for SCHED_FIFO and SCHED_RR, else 0");
    }
    Ok(Some(SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice,
        priority: priority as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
    }))
}

fn mempolicy(l: &Linux) -> Result<Option<MemPolicy>> {
    let Some(m) = l.memory_policy() else {
        return Ok(None);
    };
    let mut mode = match m.mode() {
        MemoryPolicyModeType::MpolDefault => 0,
        MemoryPolicyModeType::MpolPreferred => 1,
        MemoryPolicyModeType::MpolBind => 2,
        MemoryPolicyModeType::MpolInterleave => 3,
        MemoryPolicyModeType::MpolLocal => 4,
        MemoryPolicyModeType::MpolPreferredMany => 5,
        MemoryPolicyModeType::MpolWeightedInterleave => 6,
    };
    for f in m.flags().iter().flatten() {
        mode |= match f {
            MemoryPolicyFlagType::MpolFNumaBalancing => 1 << 13,
            MemoryPolicyFlagType::MpolFRelativeNodes => 1 << 14,
            MemoryPolicyFlagType::MpolFStaticNodes => 1 << 15,
        };
    }
    let nodes = match m.nodes().as_deref().filter(|n| !n.is_empty()) {
        Some(n) => parse_id_list(n).context("linux.memoryPolicy.nodes")?,
        None => Vec::new(),
    };
    let needs_nodes = matches!(mode & 0xff, 2 | 3 | 5 | 6);
    if needs_nodes && nodes.is_empty() {
        bail!("linux.memoryPolicy: this mode needs nodes");
    }
    if matches!(mode & 0xff, 0 | 4) && !nodes.is_empty() {
        bail!("linux.memoryPolicy: MPOL_DEFAULT and MPOL_LOCAL take no nodes");
    }
    let mut mask = vec![0u64; MAX_IDS / 64];
    for n in nodes {
        mask[n / 64] |= 1 << (n % 64);
    }
    Ok(Some(MemPolicy { mode, mask }))
}

fn personality(l: &Linux) -> Result<Option<libc::c_ulong>> {
    let Some(p) = l.personality() else {
        return Ok(None);
    };
    if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        bail!("linux.personality.flags are not supported");
    }
    Ok(Some(match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    }))
}

impl Placement {
    /// Reads the attributes of `p` and `linux` (none of `linux` for `exec`).
    pub(crate) fn from_spec(p: &Process, linux: Option<&Linux>) -> Result<Placement> {
        let affinity = p.exec_cpu_affinity().as_ref();
        let list = |s: Option<&String>, what: &str| -> Result<Option<Vec<usize>>> {
            s.filter(|s| !s.is_empty())
                .map(|s| {
                    parse_id_list(s).with_context(|| format!("process.execCPUAffinity.{what}"))
                })
                .transpose()
        };
        Ok(Placement {
            ioprio: ioprio(p)?,
            sched: sched(p)?,
            affinity_initial: list(affinity.and_then(|a| a.initial().as_ref()), "initial")?,
            affinity_final: list(
                affinity.and_then(|a| a.cpu_affinity_final().as_ref()),
                "final",
            )?,
            mempolicy: linux.map(mempolicy).transpose()?.flatten(),
            personality: linux.map(personality).transpose()?.flatten(),
        })
    }

    /// At init's start (before it joins the cgroup): `execCPUAffinity.initial`.
    pub(crate) fn apply_initial(&self) -> Result<()> {
        match &self.affinity_initial {
            Some(cpus) => set_affinity(cpus).context("execCPUAffinity.initial"),
            None => Ok(()),
        }
    }

    /// Before capabilities are dropped: I/O priority, scheduler, memory policy and
    /// personality (a real-time class or policy needs privileges the process may lose).
    pub(crate) fn apply_privileged(&self) -> Result<()> {
        if let Some(v) = self.ioprio {
            // SAFETY: ioprio_set takes plain integers (IOPRIO_WHO_PROCESS 1, self 0).
            if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, v) } < 0 {
                return Err(std::io::Error::last_os_error()).context("ioprio_set");
            }
        }
        if let Some(attr) = &self.sched {
            // SAFETY: `attr` is a valid `struct sched_attr` whose `size` field is its size;
            // the kernel only reads it.
            let r =
                unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) };
            if r < 0 {
                return Err(std::io::Error::last_os_error()).context("sched_setattr");
            }
        }
        if let Some(m) = &self.mempolicy {
            let maxnode = (m.mask.len() * 64 + 1) as libc::c_ulong;
            // SAFETY: `mask` holds `maxnode - 1` bits, as set_mempolicy(2) reads them.
            let r =
                unsafe { libc::syscall(libc::SYS_set_mempolicy, m.mode, m.mask.as_ptr(), maxnode) };
            if r < 0 {
                return Err(std::io::Error::last_os_error()).context("set_mempolicy");
            }
        }
        if let Some(p) = self.personality {
            // SAFETY: personality takes a plain integer.
            if unsafe { libc::personality(p) } < 0 {
                return Err(std::io::Error::last_os_error()).context("personality");
            }
        }
        Ok(())
    }

    /// Right before execve: `execCPUAffinity.final`.
    pub(crate) fn apply_final(&self) -> Result<()> {
        match &self.affinity_final {
            Some(cpus) => set_affinity(cpus).context("execCPUAffinity.final"),
            None => Ok(()),
        }
    }
}

fn set_affinity(cpus: &[usize]) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(err!("CPU {c} is beyond the CPU set size"));
        }
        // SAFETY: `c` is below CPU_SETSIZE (checked above), so the bit is inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } < 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process from `json`, with the `user` every process needs.
    fn process(json: &str) -> Process {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["user"] = serde_json::json!({"uid": 0, "gid": 0});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn lists_parse_and_bad_ones_fail() {
        assert_eq!(parse_id_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_id_list(" 7 ").unwrap(), vec![7]);
        for bad in ["", "3-1", "a", "0-99999", "1,,x"] {
            assert!(parse_id_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_from_the_config() {
        let p = process(
            r#"{"cwd": "/", "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0},
                "scheduler": {"policy": "SCHED_BATCH", "nice": 5},
                "execCPUAffinity": {"final": "0"}}"#,
        );
        let pl = Placement::from_spec(&p, None).unwrap();
        assert_eq!(pl.ioprio, Some(3 << 13));
        let s = pl.sched.unwrap();
        assert_eq!((s.policy, s.nice, s.priority, s.size), (3, 5, 0, 48));
        assert_eq!(pl.affinity_final, Some(vec![0]));
        assert_eq!(pl.affinity_initial, None);
        let linux: Linux = serde_json::from_str(
            r#"{"personality": {"domain": "LINUX32"},
                "memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}}"#,
        )
        .unwrap();
        let pl = Placement::from_spec(&process(r#"{"cwd": "/"}"#), Some(&linux)).unwrap();
        assert_eq!(pl.personality, Some(8));
        let m = pl.mempolicy.unwrap();
        assert_eq!(m.mode, 2 | 1 << 15);
        assert_eq!(m.mask[0], 1);
    }

    #[test]
    fn bad_values_are_errors() {
        for json in [
            r#"{"cwd": "/", "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 8}}"#,
            r#"{"cwd": "/", "scheduler": {"policy": "SCHED_FIFO", "priority": 0}}"#,
            r#"{"cwd": "/", "scheduler": {"policy": "SCHED_OTHER", "priority": 5}}"#,
            r#"{"cwd": "/", "scheduler": {"policy": "SCHED_OTHER", "nice": 40}}"#,
            r#"{"cwd": "/", "execCPUAffinity": {"initial": "0-5000"}}"#,
        ] {
            assert!(
                Placement::from_spec(&process(json), None).is_err(),
                "{json}"
            );
        }
        let linux: Linux =
            serde_json::from_str(r#"{"memoryPolicy": {"mode": "MPOL_BIND"}}"#).unwrap();
        assert!(Placement::from_spec(&process(r#"{"cwd": "/"}"#), Some(&linux)).is_err());
    }
}
