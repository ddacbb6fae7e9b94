//! Linux security modules for the container's process: an AppArmor profile
//! (`process.apparmorProfile`, exec's `--apparmor`) is put on at its execve as runc
//! puts it on (`exec PROFILE` written to `/proc/self/attr/apparmor/exec`). SELinux
//! labels (`process.selinuxLabel`, exec's `--process-label`, `linux.mountLabel`) are
//! not supported: a config that sets one is refused, never run unconfined. A profile or
//! label asked for on a host where that module is off is refused too, as runc does.

use std::path::Path;

use oci_spec::runtime::{Linux, Process};

use crate::error::{bail, Context, Result};

/// The security module settings of one process, checked against the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lsm {
    apparmor: Option<String>,
}

/// Whether AppArmor is on (runc's test: securityfs has it and the module says `Y`).
fn apparmor_enabled(root: &Path) -> bool {
    root.join("sys/kernel/security/apparmor").exists()
        && std::fs::read(root.join("sys/module/apparmor/parameters/enabled"))
            .is_ok_and(|b| b.first() == Some(&b'Y'))
}

/// Whether SELinux is on.
fn selinux_enabled(root: &Path) -> bool {
    root.join("sys/fs/selinux/enforce").exists()
}

impl Lsm {
    /// The settings of `p` (and, for `create`, the config's `linux`), on the host whose
    /// `/` is `host_root` (`/` but in tests).
    pub(crate) fn from_spec(p: &Process, linux: Option<&Linux>, host_root: &Path) -> Result<Lsm> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        for (field, label) in [
            ("process.selinuxLabel", set(p.selinux_label())),
            ("linux.mountLabel", linux.and_then(|l| set(l.mount_label()))),
        ] {
            if let Some(label) = label {
                if !selinux_enabled(host_root) {
                    bail!("{field} {label:?} is set but SELinux is not enabled on this host");
                }
                bail!("{field} {label:?}: SELinux labels are not supported by this runtime");
            }
        }
        let apparmor = set(p.apparmor_profile());
        if let Some(profile) = &apparmor {
            if !apparmor_enabled(host_root) {
                bail!("process.apparmorProfile {profile:?} is set but AppArmor is not enabled on this host");
            }
        }
        Ok(Lsm { apparmor })
    }

    /// Right before execve: the AppArmor profile the process gets at that execve.
    pub(crate) fn apply(&self) -> Result<()> {
        let Some(profile) = &self.apparmor else {
            return Ok(());
        };
        let attr = format!("exec {profile}");
        let newer = Path::new("/proc/self/attr/apparmor/exec");
        let path = if newer.exists() {
            newer
        } else {
            Path::new("/proc/self/attr/exec")
        };
        std::fs::write(path, attr)
            .with_context(|| format!("apply AppArmor profile {profile:?} ({})", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: &str) -> Process {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["user"] = serde_json::json!({"uid": 0, "gid": 0});
        v["cwd"] = "/".into();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn profiles_and_labels_against_the_host() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        let aa = process(r#"{"apparmorProfile": "docker-default"}"#);
        let e = Lsm::from_spec(&aa, None, h).unwrap_err();
        assert!(e.to_string().contains("AppArmor is not enabled"), "{e}");
        std::fs::create_dir_all(h.join("sys/kernel/security/apparmor")).unwrap();
        std::fs::create_dir_all(h.join("sys/module/apparmor/parameters")).unwrap();
        std::fs::write(h.join("sys/module/apparmor/parameters/enabled"), "Y\n").unwrap();
        let l = Lsm::from_spec(&aa, None, h).unwrap();
        assert_eq!(l.apparmor.as_deref(), Some("docker-default"));
        assert_eq!(
            Lsm::from_spec(&process("{}"), None, h).unwrap(),
            Lsm::default()
        );
        let se = process(r#"{"selinuxLabel": "system_u:system_r:container_t:s0"}"#);
        let e = Lsm::from_spec(&se, None, h).unwrap_err();
        assert!(e.to_string().contains("SELinux is not enabled"), "{e}");
        std::fs::create_dir_all(h.join("sys/fs/selinux")).unwrap();
        std::fs::write(h.join("sys/fs/selinux/enforce"), "1").unwrap();
        let e = Lsm::from_spec(&se, None, h).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
