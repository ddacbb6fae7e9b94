//! cgroups through virtkit-cgroups: path choice, OCI resources → `Resources` (through
//! `Resources::from_oci`) with runc's default device policy (v1 device lists, v2 eBPF).

use crate::error::{Context, Result};
use oci_spec::runtime::LinuxResources;
use virtkit_cgroups::devices::DeviceRule;
use virtkit_cgroups::Resources;

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

/// The resources of a new container: `linux.resources` through virtkit-cgroups'
/// [`Resources::from_oci`], with the device policy completed: everything denied, then
/// runc's defaults, then the config's rules in order (a later rule wins). On v1 that is
/// written to `devices.deny`/`devices.allow`; on v2 it becomes an eBPF device program.
pub fn create_resources(r: Option<&LinuxResources>) -> Result<Resources> {
    let mut out = match r {
        Some(r) => Resources::from_oci(r).context("linux.resources")?,
        None => Resources::default(),
    };
    let mut rules = virtkit_cgroups::devices::DEFAULT_RULES.to_vec();
    // A blanket "deny all" is what we start from.
    rules.extend(
        out.devices
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| *d != DeviceRule::DENY_ALL),
    );
    out.devices = Some(rules);
    Ok(out)
}

/// The resources for `update`: as [`create_resources`] but the device policy is left
/// alone (runc's `update` does not change it either).
pub fn update_resources(r: &LinuxResources) -> Result<Resources> {
    let mut out = Resources::from_oci(r).context("resources")?;
    out.devices = None;
    Ok(out)
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
            r#"{"memory":{"limit":1048576,"swap":2097152},"cpu":{"shares":512,"quota":20000,"period":100000},"pids":{"limit":10},
                "devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":10,"minor":200,"access":"rwm"},
                           {"allow":false,"type":"c","major":1,"minor":9,"access":"rwm"}]}"#,
        )
        .unwrap();
        let c = create_resources(Some(&r)).unwrap();
        assert_eq!(c.memory.limit, Some(1 << 20));
        assert_eq!(c.memory.swap, Some(2 << 20));
        assert_eq!(c.cpu.shares, Some(512));
        assert_eq!(c.cpu.quota, Some(20000));
        assert_eq!(c.pids.limit, Some(10));
        let rules = c.devices.unwrap();
        let lines: Vec<String> = rules.iter().map(|r| r.v1_line()).collect();
        // Deny all once, runc's defaults, then the config's rules in order.
        assert_eq!(rules[0], DeviceRule::DENY_ALL);
        assert_eq!(
            rules.iter().filter(|r| **r == DeviceRule::DENY_ALL).count(),
            1
        );
        assert_eq!(lines[1], "c *:* m");
        assert_eq!(lines[3], "c 1:3 rwm");
        assert_eq!(lines[lines.len() - 2], "c 10:200 rwm");
        assert!(!rules[rules.len() - 1].allow);
        use virtkit_cgroups::devices::{evaluate, DeviceAccess, DeviceType, DEFAULT_RULES};
        let rw = DeviceAccess::parse("rw").unwrap();
        assert!(evaluate(&rules, DeviceType::Char, 1, 3, rw)); // /dev/null
        assert!(evaluate(&rules, DeviceType::Char, 10, 200, rw)); // config allows tun
        assert!(!evaluate(&rules, DeviceType::Char, 1, 9, rw)); // config denies urandom
        assert!(!evaluate(&rules, DeviceType::Block, 254, 0, rw)); // host disk
                                                                   // No resources at all: still the default device policy.
        let d = create_resources(None).unwrap();
        assert_eq!(d.devices.as_ref().map(Vec::len), Some(DEFAULT_RULES.len()));
        // update leaves devices alone.
        assert!(update_resources(&r).unwrap().devices.is_none());
        // Bad input is an error, not a panic.
        let bad: LinuxResources = serde_json::from_str(
            r#"{"devices":[{"allow":true,"type":"c","major":1,"minor":3,"access":"rwx"}]}"#,
        )
        .unwrap();
        assert!(create_resources(Some(&bad)).is_err());
    }
}
