//! Fuzzing entry points (feature `test-utils`).
//!
//! `fuzz/fuzz_targets/cgroup_parsers.rs` calls [`parsers`] and
//! `fuzz/fuzz_targets/oci_config.rs` calls [`oci_spec()`] (feature `oci` too); the
//! crate's `tests/fuzz_corpus.rs` replays every committed corpus input through
//! them, so an input that once crashed a parser stays covered on stable Rust.

use std::path::Path;

use crate::detect::{Hierarchies, ProcCgroup};
use crate::devices::DeviceAccess;
use crate::{fs, normalize_path, open, CgroupVersion, Layout};

/// What [`parsers`] accepted, one flag per parser.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseRun {
    /// `Hierarchies::from_mountinfo` found a layout.
    pub mountinfo: bool,
    /// `ProcCgroup::parse` accepted the text.
    pub proc_cgroup: bool,
    /// `io.stat` parsed.
    pub io_stat: bool,
    /// The v1 blkio pair parsed.
    pub blkio: bool,
    /// A pid list parsed.
    pub pids: bool,
    /// One number (or "max") parsed.
    pub number: bool,
    /// Keys found in the text read as a flat keyed file.
    pub keys: usize,
}

/// Every parser of kernel text in the crate, fed the same input (as UTF-8,
/// lossily, as `fs::read` would refuse anything else): mountinfo (then a
/// manager opened on what it found), `/proc/PID/cgroup`, `io.stat`, the v1
/// blkio pair (the text split at its first NUL into bytes and ios, or the
/// whole text for both), flat keyed files (`cpu.stat`, `memory.events`,
/// `memory.stat`), single numbers, pid lists, `freezer.state`, device
/// numbers, device access strings and cgroup paths (each line and each
/// word). Checks that what parses is consistent. It must never panic.
pub fn parsers(data: &[u8]) -> ParseRun {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let path = Path::new("/sys/fs/cgroup/fuzz/file");
    let mut run = ParseRun::default();

    if let Ok(h) = Hierarchies::from_mountinfo(text) {
        run.mountinfo = true;
        let want = match h.layout() {
            Layout::Unified => CgroupVersion::V2,
            Layout::Legacy | Layout::Hybrid => CgroupVersion::V1,
        };
        assert_eq!(h.version(), want, "{h:?}");
        assert_eq!(
            h.layout() == Layout::Legacy,
            h.unified_mount().is_none(),
            "{h:?}"
        );
        let _ = h.v1_mounts().count();
        for name in ["virtkit/fuzz", text.lines().next().unwrap_or("")] {
            if let Ok(m) = open(&h, name) {
                assert_eq!(m.version(), h.version(), "{h:?}");
                assert!(!m.dirs().is_empty(), "{h:?}");
            }
        }
    }
    if let Ok(list) = ProcCgroup::parse(text) {
        run.proc_cgroup = true;
        let _ = ProcCgroup::find(&list, None);
        let _ = ProcCgroup::find(&list, Some("memory"));
    }
    if let Ok(stats) = fs::parse_io_stat(path, text) {
        run.io_stat = true;
        assert!(
            stats.windows(2).all(|w| w[0].device < w[1].device),
            "{stats:?}"
        );
    }
    let (bytes, ios) = text.split_once('\0').unwrap_or((text, text));
    if let Ok(stats) = fs::parse_blkio_stats((path, bytes), (path, ios)) {
        run.blkio = true;
        assert!(
            stats.windows(2).all(|w| w[0].device < w[1].device),
            "{stats:?}"
        );
    }
    run.pids = fs::parse_pids(path, text).is_ok();
    if let Ok(n) = fs::parse_u64(path, text) {
        run.number = true;
        if n != u64::MAX {
            assert_eq!(fs::parse_u64(path, &n.to_string()).ok(), Some(n));
        }
    }
    for key in [
        "oom_kill",
        "nr_periods",
        "nr_throttled",
        "throttled_time",
        "usage_usec",
        "populated",
        "frozen",
    ] {
        if let Ok(Some(_)) = fs::keyed_value(path, text, key) {
            run.keys += 1;
        }
    }
    let map = fs::keyed_map(text);
    assert!(map.len() <= text.lines().count(), "{map:?}");
    let _ = crate::v1::parse_freezer_state(path, text);
    for line in text.lines() {
        let _ = fs::parse_u64(path, line);
        let _ = normalize_path(line);
        for word in line.split_whitespace() {
            if let Some(d) = fs::parse_device(word) {
                assert_eq!(fs::parse_device(&d.to_string()), Some(d));
            }
            if let Ok(a) = DeviceAccess::parse(word) {
                assert_eq!(
                    DeviceAccess::parse(&a.to_string()).ok(),
                    Some(a),
                    "{word:?}"
                );
            }
        }
    }
    run
}

#[cfg(feature = "oci")]
pub use oci::oci_spec;

#[cfg(feature = "oci")]
mod oci {
    use oci_spec::runtime::Spec;

    use crate::convert;
    use crate::devices::{bpf_program, evaluate, interp, DeviceAccess, DeviceType};
    use crate::error::Result;
    use crate::normalize_path;
    use crate::resources::Resources;

    /// An OCI spec's cgroup data through this crate, as a runtime uses it:
    /// `cgroupsPath` as a cgroup path, `linux.resources` through
    /// [`Resources::from_oci`] and [`Resources::validate`], the v2 conversions
    /// of [`crate::convert`] on the values (as `V2Manager::apply` makes them),
    /// the device policy (deny all, runc's defaults, the config's rules) as v1
    /// lines and as the v2 eBPF program, which must agree with [`evaluate`] on
    /// requests for the devices the rules name. Returns the resources, or the
    /// error that refused them. It must never panic.
    pub fn oci_spec(spec: &Spec) -> Result<Resources> {
        let Some(linux) = spec.linux() else {
            return Ok(Resources::default());
        };
        if let Some(p) = linux.cgroups_path().as_ref().and_then(|p| p.to_str()) {
            let _ = normalize_path(p);
        }
        let Some(r) = linux.resources() else {
            return Ok(Resources::default());
        };
        let res = Resources::from_oci(r)?;
        let valid = res.validate();
        let m = &res.memory;
        let (limit, swap) = (m.limit.unwrap_or(0), m.swap.unwrap_or(0));
        if let Ok(v) = convert::memory_swap_to_v2(swap, limit) {
            let _ = convert::limit_to_v2(v);
        }
        for v in [m.limit, m.reservation, res.pids.limit]
            .into_iter()
            .flatten()
        {
            let _ = convert::limit_to_v2(v);
        }
        let c = &res.cpu;
        if let Some(s) = c.shares {
            let w = convert::cpu_shares_to_weight(s);
            let l = convert::cpu_shares_to_weight_linear(s);
            if s != 0 {
                assert!((1..=convert::CPU_WEIGHT_MAX).contains(&w), "{s} -> {w}");
                assert!((1..=convert::CPU_WEIGHT_MAX).contains(&l), "{s} -> {l}");
            }
        }
        let _ = convert::cpu_max(c.quota, c.period);
        let b = &res.block_io;
        for w in b
            .weight
            .iter()
            .chain(b.weight_device.iter().map(|w| &w.weight))
        {
            let v = convert::blkio_weight_to_io_weight(*w);
            assert!(*w == 0 || (1..=10_000).contains(&v), "{w} -> {v}");
        }
        let mut rules = crate::devices::DEFAULT_RULES.to_vec();
        rules.extend(res.devices.iter().flatten().copied());
        for r in &rules {
            let _ = r.v1_line();
        }
        if let Ok(prog) = bpf_program(&rules) {
            assert!(interp::all_reachable(&prog), "unreachable instructions");
            // Requests for every device a rule names, and one no rule names.
            let mut devs: Vec<(u32, u32)> = rules
                .iter()
                .map(|r| (r.major.unwrap_or(7), r.minor.unwrap_or(7)))
                .collect();
            devs.push((u32::MAX, 0));
            devs.sort_unstable();
            devs.dedup();
            for (major, minor) in devs.into_iter().take(64) {
                for (t, kind) in [(1, DeviceType::Block), (2, DeviceType::Char)] {
                    for bits in 1..8u32 {
                        let access = DeviceAccess {
                            mknod: bits & 1 != 0,
                            read: bits & 2 != 0,
                            write: bits & 4 != 0,
                        };
                        let want = evaluate(&rules, kind, major, minor, access);
                        let got = interp::run(&prog, bits << 16 | t, major, minor);
                        assert_eq!(
                            got,
                            u64::from(want),
                            "the eBPF program and the rules disagree on {kind:?} {major}:{minor} {access}"
                        );
                    }
                }
            }
        }
        valid.map(|()| res)
    }
}
