//! `linux.sysctl`, checked as runc 1.1's config validator does before anything is made:
//! `/proc/sys` is only partly namespaced, and a sysctl outside the namespaces the
//! container gets would set the host's value. runc's rules and messages:
//!
//! - the IPC ones (`kernel.msgmax`, `msgmnb`, `msgmni`, `sem`, `shmall`, `shmmax`,
//!   `shmmni`, `shm_rmid_forced`, `fs.mqueue.*`) need an IPC namespace: else `sysctl
//!   "kernel.msgmax" is not allowed in the hosts ipc namespace`;
//! - `net.*` needs a network namespace that is not the caller's (a new one, or a path to
//!   another): else `sysctl "net.ipv4.ip_forward" not allowed in host network namespace`
//!   (a path that cannot be read: `invalid netns path: stat ...`);
//! - with a UTS namespace, `kernel.domainname` is allowed and `kernel.hostname` refused
//!   (`... conflicts with the OCI "hostname" field`);
//! - anything else: `sysctl "vm.swappiness" is not in a separate kernel namespace`.
//!
//! Stricter than runc: an IPC or UTS namespace given by a path to the caller's own is the
//! host's (runc accepts it and writes the host's values), and a key must be a plain
//! dotted name (no `/`, no empty part, so no way out of `/proc/sys`; runc also takes the
//! `net/ipv4/ip_forward` form). Keys are checked in sorted order (runc's is random).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use oci_spec::runtime::{Linux, LinuxNamespaceType};

use crate::error::{bail, err, Result};

/// The IPC-namespaced sysctls of runc's validator, besides `fs.mqueue.*`.
const IPC: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Whether `key` is a plain dotted sysctl name: parts of ASCII letters, digits, `_` and
/// `-`, joined by single dots. Such a name maps to a path under `/proc/sys` (dots
/// become `/`) that cannot leave it.
pub(crate) fn plain_name(key: &str) -> bool {
    key.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// The container's namespace of type `t` as runc's validator sees it: `None` without
/// one, `Some(true)` for the caller's own (a path to it), `Some(false)` for a new one or
/// a path to another.
fn namespace(linux: &Linux, t: LinuxNamespaceType, proc_name: &str) -> Result<Option<bool>> {
    let Some(ns) = linux.namespaces().iter().flatten().find(|n| n.typ() == t) else {
        return Ok(None);
    };
    let Some(path) = ns.path() else {
        return Ok(Some(false));
    };
    let own = format!("/proc/self/ns/{proc_name}");
    let stat = |p: &Path| {
        std::fs::metadata(p).map_err(|e| {
            let e = e
                .raw_os_error()
                .map(errno_text)
                .unwrap_or_else(|| e.to_string());
            let kind = if proc_name == "net" {
                "netns"
            } else {
                proc_name
            };
            err!("invalid {kind} path: stat {}: {e}", p.display())
        })
    };
    let (a, b) = (stat(Path::new(&own))?, stat(path)?);
    Ok(Some(a.dev() == b.dev() && a.ino() == b.ino()))
}

/// An errno's text as Go prints it (lower case, no " (os error N)").
fn errno_text(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// Refuses each `linux.sysctl` key that is not a plain dotted name or whose namespace
/// the container does not have of its own (see the module's documentation).
pub(crate) fn check(linux: &Linux) -> Result<()> {
    let Some(sysctl) = linux.sysctl() else {
        return Ok(());
    };
    let mut keys: Vec<&String> = sysctl.keys().collect();
    keys.sort();
    for k in keys {
        if !plain_name(k) {
            bail!(
                "sysctl {k:?} is not a plain dotted name (letters, digits, '_' and '-' \
                 between single dots; no '/' or '..')"
            );
        }
        if IPC.contains(&k.as_str()) || k.starts_with("fs.mqueue.") {
            if namespace(linux, LinuxNamespaceType::Ipc, "ipc")? != Some(false) {
                bail!("sysctl {k:?} is not allowed in the hosts ipc namespace");
            }
            continue;
        }
        if k.starts_with("net.") {
            if namespace(linux, LinuxNamespaceType::Network, "net")? != Some(false) {
                bail!("sysctl {k:?} not allowed in host network namespace");
            }
            continue;
        }
        if namespace(linux, LinuxNamespaceType::Uts, "uts")? == Some(false) {
            match k.as_str() {
                "kernel.domainname" => continue,
                "kernel.hostname" => bail!(
                    "sysctl {k:?} is not allowed as it conflicts with the OCI \"hostname\" field"
                ),
                _ => {}
            }
        }
        bail!("sysctl {k:?} is not in a separate kernel namespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(v: serde_json::Value) -> Linux {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plain_names() {
        for ok in [
            "net.ipv4.ip_forward",
            "net.ipv4.conf.veth-1.rp_filter",
            "kernel.sem",
        ] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "net..ipv4",
            ".net.ipv4",
            "net.ipv4.",
            "net/ipv4/ip_forward",
            "net.ipv4/../../kernel/hostname",
            "net.ipv4.ip forward",
            "net.ipv4.ip_forward\n",
        ] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn allowed_in_the_containers_own_namespaces() {
        let l = linux(serde_json::json!({
            "namespaces": [{"type": "network"}, {"type": "ipc"}, {"type": "uts"}],
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "8192",
                       "fs.mqueue.msg_max": "10", "kernel.domainname": "d"},
        }));
        check(&l).unwrap();
        // No sysctl at all: nothing to check, whatever the namespaces.
        check(&linux(serde_json::json!({}))).unwrap();
    }

    #[test]
    fn own_namespace_by_path_is_the_hosts() {
        for (t, key, want) in [
            (
                "network",
                "net.ipv4.ip_forward",
                "not allowed in host network namespace",
            ),
            (
                "ipc",
                "kernel.shmmax",
                "is not allowed in the hosts ipc namespace",
            ),
            (
                "uts",
                "kernel.domainname",
                "is not in a separate kernel namespace",
            ),
        ] {
            let proc_name = if t == "network" { "net" } else { t };
            let l = linux(serde_json::json!({
                "namespaces": [{"type": t, "path": format!("/proc/self/ns/{proc_name}")}],
                "sysctl": {key: "1"},
            }));
            let e = check(&l).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
        let l = linux(serde_json::json!({
            "namespaces": [{"type": "network", "path": "/nonexistent"}],
            "sysctl": {"net.core.somaxconn": "1"},
        }));
        let e = check(&l).unwrap_err().to_string();
        assert!(
            e.contains("invalid netns path: stat /nonexistent: no such file or directory"),
            "{e}"
        );
    }
}
