//! cgroups through virtkit-cgroups: path choice, OCI resources → `Resources`, and the v1
//! devices controller (which virtkit-cgroups leaves to its callers).

use anyhow::{Context, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use virtkit_cgroups::{
    CgroupManager, CgroupVersion, DeviceNumber, Hierarchies, Resources, ThrottleDevice,
    WeightDevice,
};

static HIERARCHIES: std::sync::OnceLock<Hierarchies> = std::sync::OnceLock::new();

/// Opens the manager for `path` on this host's layout (detected once per process).
pub fn open(path: &str) -> Result<Box<dyn CgroupManager>> {
    let hier = match HIERARCHIES.get() {
        Some(h) => h,
        None => {
            let h = Hierarchies::detect().context("detect cgroup hierarchies")?;
            HIERARCHIES.get_or_init(|| h)
        }
    };
    Ok(virtkit_cgroups::open(hier, path)?)
}

/// The cgroup path for a container: `cgroupsPath` from the config or `virtkit/<id>`.
/// A systemd-style "slice:prefix:name" is mapped to "slice/prefix-name.scope".
pub fn cgroup_path(spec_path: Option<&std::path::Path>, id: &str) -> String {
    match spec_path.and_then(|p| p.to_str()) {
        Some(p) if !p.is_empty() => {
            let parts: Vec<&str> = p.split(':').collect();
            if parts.len() == 3 && !p.starts_with('/') {
                format!("{}/{}-{}.scope", parts[0], parts[1], parts[2])
            } else {
                p.trim_start_matches('/').to_string()
            }
        }
        _ => format!("virtkit/{id}"),
    }
}

/// The files through which init (or an exec'd process) moves *itself* into the
/// cgroup on v1: each hierarchy's `tasks`, written with "0".
///
/// Moving another process (writing its pid to `cgroup.procs`) takes the kernel's global
/// `cgroup_threadgroup_rwsem` for writing, and the first writer after a quiet period
/// waits for a full RCU grace period (~10 ms on this host). A single-threaded task
/// moving itself through `tasks` skips that lock. Empty on v2, where the parent writes
/// `cgroup.procs` (virtkit-cgroups' `add_process`).
pub fn self_join_files(cg: &dyn CgroupManager) -> Vec<std::ffi::CString> {
    if cg.version() != CgroupVersion::V1 {
        return Vec::new();
    }
    cg.dirs()
        .iter()
        .filter_map(|d| std::ffi::CString::new(d.join("tasks").as_os_str().as_encoded_bytes()).ok())
        .collect()
}

/// Converts OCI `linux.resources` to virtkit-cgroups' [`Resources`].
pub fn to_resources(r: &LinuxResources) -> Resources {
    let mut out = Resources::default();
    if let Some(m) = r.memory() {
        out.memory.limit = m.limit();
        out.memory.reservation = m.reservation();
        out.memory.swap = m.swap();
        out.memory.swappiness = m.swappiness();
    }
    if let Some(c) = r.cpu() {
        out.cpu.shares = c.shares();
        out.cpu.quota = c.quota();
        out.cpu.period = c.period();
        out.cpu.burst = c.burst();
        out.cpu.cpus = c.cpus().clone();
        out.cpu.mems = c.mems().clone();
    }
    if let Some(p) = r.pids() {
        out.pids.limit = Some(p.limit());
    }
    if let Some(b) = r.block_io() {
        out.block_io.weight = b.weight();
        if let Some(wd) = b.weight_device() {
            for w in wd {
                if let Some(weight) = w.weight() {
                    out.block_io.weight_device.push(WeightDevice {
                        device: DeviceNumber::new(w.major() as u64, w.minor() as u64),
                        weight,
                    });
                }
            }
        }
        let conv = |v: &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>| {
            v.iter()
                .flatten()
                .map(|t| ThrottleDevice {
                    device: DeviceNumber::new(t.major() as u64, t.minor() as u64),
                    rate: t.rate(),
                })
                .collect::<Vec<_>>()
        };
        out.block_io.throttle_read_bps_device = conv(b.throttle_read_bps_device());
        out.block_io.throttle_write_bps_device = conv(b.throttle_write_bps_device());
        out.block_io.throttle_read_iops_device = conv(b.throttle_read_iops_device());
        out.block_io.throttle_write_iops_device = conv(b.throttle_write_iops_device());
    }
    if let Some(u) = r.unified() {
        out.unified = u.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    out
}

fn dev_rule(d: &LinuxDeviceCgroup) -> String {
    let t = match d.typ() {
        Some(LinuxDeviceType::B) => 'b',
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::P) => 'p',
        Some(LinuxDeviceType::A) | None => 'a',
    };
    let n = |x: Option<i64>| x.map_or("*".to_string(), |v| v.to_string());
    format!(
        "{t} {}:{} {}",
        n(d.major()),
        n(d.minor()),
        d.access().as_deref().unwrap_or("rwm")
    )
}

/// The device rules every container gets (runc's defaults): null, zero, full, random,
/// urandom, tty, console, ptmx and the pts devices.
const DEFAULT_ALLOWED: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// Applies the device rules on cgroup v1 (`devices.deny` / `devices.allow`): everything
/// denied, then runc's default devices, then the config's rules in order.
pub fn apply_devices(cg: &dyn CgroupManager, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    if cg.version() != CgroupVersion::V1 {
        return Ok(());
    }
    let Some(dir) = cg
        .dirs()
        .into_iter()
        .find(|d| d.join("devices.allow").exists())
    else {
        return Ok(());
    };
    let write = |file: &str, v: &str| -> Result<()> {
        std::fs::write(dir.join(file), v)
            .with_context(|| format!("write {v:?} to {}", dir.join(file).display()))
    };
    write("devices.deny", "a")?;
    for r in DEFAULT_ALLOWED {
        write("devices.allow", r)?;
    }
    for d in rules {
        // A blanket "deny all" is what we start from.
        if !d.allow() && dev_rule(d).starts_with("a *:* ") {
            continue;
        }
        let file = if d.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(file, &dev_rule(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(cgroup_path(None, "a"), "virtkit/a");
        assert_eq!(
            cgroup_path(Some(std::path::Path::new("/libpod_parent/libpod-x")), "a"),
            "libpod_parent/libpod-x"
        );
        assert_eq!(
            cgroup_path(Some(std::path::Path::new("machine.slice:libpod:x")), "a"),
            "machine.slice/libpod-x.scope"
        );
    }

    #[test]
    fn resources_convert() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":1048576,"swap":2097152},"cpu":{"shares":512,"quota":20000,"period":100000},"pids":{"limit":10}}"#,
        )
        .unwrap();
        let c = to_resources(&r);
        assert_eq!(c.memory.limit, Some(1 << 20));
        assert_eq!(c.memory.swap, Some(2 << 20));
        assert_eq!(c.cpu.shares, Some(512));
        assert_eq!(c.cpu.quota, Some(20000));
        assert_eq!(c.pids.limit, Some(10));
    }

    #[test]
    fn device_rules() {
        let d: LinuxDeviceCgroup = serde_json::from_str(
            r#"{"allow":true,"type":"c","major":10,"minor":200,"access":"rwm"}"#,
        )
        .unwrap();
        assert_eq!(dev_rule(&d), "c 10:200 rwm");
        let d: LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow":false,"access":"rwm"}"#).unwrap();
        assert_eq!(dev_rule(&d), "a *:* rwm");
    }
}
