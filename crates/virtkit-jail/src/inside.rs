//! Inside the jail: the root it pivots into (through virtkit-namespaces' [`Syscalls`], so
//! the steps are unit-tested on the recording fake) and the identity it drops to.

use std::path::{Path, PathBuf};

use virtkit_namespaces::Syscalls;

use crate::{JailConfig, JailError};

/// Where `path` (absolute) lies under the jail's `root` on the host.
pub(crate) fn host_path(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Sets up the jail's root in the (new) mount namespace and pivots into it: the caller's
/// mounts stop propagating both ways, each file is bound onto its placeholder (read-only,
/// nosuid, noexec where asked; devices keep their node), a `/proc` of the new PID
/// namespace is mounted, the old root is detached, the hostname becomes the jail's id.
pub fn enter_root(sys: &impl Syscalls, cfg: &JailConfig) -> Result<(), JailError> {
    let root = cfg.root.as_path();
    sys.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    // pivot_root needs the new root to be a mount point.
    sys.mount(Some(root), root, None, libc::MS_BIND, None)?;
    for f in &cfg.files {
        let target = host_path(root, &f.path);
        sys.mount(Some(&f.path), &target, None, libc::MS_BIND, None)?;
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
        if f.read_only {
            flags |= libc::MS_RDONLY;
        }
        sys.mount(None, &target, None, flags, None)?;
    }
    sys.mount(
        Some(Path::new("proc")),
        &root.join("proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    sys.chdir(root)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount2(Path::new("."), libc::MNT_DETACH)?;
    sys.chdir(Path::new("/"))?;
    sys.sethostname(&cfg.id)?;
    Ok(())
}

fn check(rc: libc::c_int, call: &'static str) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(JailError::last(call))
    }
}

/// The calling process's capability sets and thread count, from `/proc/self/status`.
pub(crate) fn status() -> Result<(Vec<(String, u64)>, usize), JailError> {
    let text = std::fs::read_to_string("/proc/self/status")
        .map_err(JailError::io("cannot read", "/proc/self/status"))?;
    let mut caps = Vec::new();
    let mut threads = 0;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.starts_with("Cap") {
                caps.push((
                    k.to_string(),
                    u64::from_str_radix(v, 16).unwrap_or(u64::MAX),
                ));
            } else if k == "Threads" {
                threads = v.parse().unwrap_or(0);
            }
        }
    }
    Ok((caps, threads))
}

/// Becomes `uid:gid` with no supplementary group but `gid`, every capability set empty
/// (bounding and ambient included) and `no_new_privs`, then checks it in
/// `/proc/self/status`. The process must have one thread (capability sets are per thread).
pub(crate) fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    let (_, threads) = status()?;
    if threads != 1 {
        return Err(JailError::Config(format!(
            "privileges are dropped before any thread starts ({threads} threads run)"
        )));
    }
    // SAFETY: plain system calls on integers and on a one-element array we own.
    unsafe {
        let groups = [gid];
        check(libc::setgroups(1, groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(JailError::last("prctl(PR_CAPBSET_DROP)"));
            }
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        )?;
        // From uid 0 to another without SECBIT_KEEP_CAPS: the permitted and effective
        // sets are cleared by the kernel.
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "prctl(PR_SET_NO_NEW_PRIVS)",
        )?;
    }
    let (caps, _) = status()?;
    if let Some((k, v)) = caps.iter().find(|(_, v)| *v != 0) {
        return Err(JailError::Config(format!(
            "capabilities left after dropping privileges: {k} {v:x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtkit_namespaces::fake::{Call, RecordingSyscalls};

    #[test]
    fn the_root_is_bound_filled_and_pivoted_in_order() {
        let sys = RecordingSyscalls::new();
        let cfg = JailConfig::new("vm1", "/srv/jail/vm1", 65534, 65534)
            .file("/images/vmlinux", true)
            .file("/dev/kvm", false);
        enter_root(&sys, &cfg).unwrap();
        let calls = sys.calls();
        let mount = |source: Option<&str>, target: &str, fstype: Option<&str>, flags| Call::Mount {
            source: source.map(PathBuf::from),
            target: PathBuf::from(target),
            fstype: fstype.map(String::from),
            flags,
            data: None,
        };
        let nosuid = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
        let want = vec![
            mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE),
            mount(Some("/srv/jail/vm1"), "/srv/jail/vm1", None, libc::MS_BIND),
            mount(
                Some("/images/vmlinux"),
                "/srv/jail/vm1/images/vmlinux",
                None,
                libc::MS_BIND,
            ),
            mount(
                None,
                "/srv/jail/vm1/images/vmlinux",
                None,
                nosuid | libc::MS_RDONLY,
            ),
            mount(
                Some("/dev/kvm"),
                "/srv/jail/vm1/dev/kvm",
                None,
                libc::MS_BIND,
            ),
            mount(None, "/srv/jail/vm1/dev/kvm", None, nosuid),
            mount(
                Some("proc"),
                "/srv/jail/vm1/proc",
                Some("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ),
            Call::Chdir("/srv/jail/vm1".into()),
            Call::PivotRoot(".".into(), ".".into()),
            Call::Umount(".".into(), libc::MNT_DETACH),
            Call::Chdir("/".into()),
            Call::Hostname("vm1".into()),
        ];
        assert_eq!(calls, want);
    }

    #[test]
    fn a_failed_step_stops_the_set_up() {
        let sys = RecordingSyscalls::new();
        sys.fail_on("pivot_root", libc::EINVAL);
        let cfg = JailConfig::new("vm1", "/srv/jail/vm1", 65534, 65534);
        let e = enter_root(&sys, &cfg).unwrap_err().to_string();
        assert!(e.contains("pivot_root"), "{e}");
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::Hostname(_))));
    }
}
