//! `create` on the recording host: every error found before the container's init is
//! cloned (bad id, bundle, config, spec fields) is reported clearly and leaves nothing:
//! no state directory, no cgroup, no host call beyond opening managers. No root needed.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use virtkit_runtime::testing::{Call, CgroupOp, RecordingHost};
use virtkit_runtime::{CreateOpts, Runtime};

mod common;
use common::bundle;

/// Runs `create` of `id` on `bundle` and checks the error mentions `want` and that
/// nothing was made.
fn refused(id: &str, bundle_dir: &Path, want: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let host = RecordingHost::new();
    let rt = Runtime::with_host(&root, Arc::new(host.clone()));
    let e = rt
        .create(&CreateOpts::new(id, bundle_dir))
        .expect_err("create should have failed");
    let msg = virtkit_runtime::error::chain(&e);
    assert!(msg.contains(want), "{id}: wanted {want:?} in {msg:?}");
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{want}: state left behind: {left:?}");
    assert!(
        !host.calls().iter().any(|c| matches!(
            c,
            Call::Cgroup {
                op: CgroupOp::Create,
                ..
            } | Call::Kill { .. }
        )),
        "{want}: {:?}",
        host.calls()
    );
}

#[test]
fn bad_ids_and_bundles_are_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let good = bundle(tmp.path(), |_| {});
    refused("../escape", &good, "invalid container id");
    refused("c1", &tmp.path().join("missing"), "bundle");
    let b = tmp.path().join("broken");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("config.json"), b"{not json").unwrap();
    refused("c1", &b, "config.json");
}

/// A change to the valid config.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn bad_configs_are_refused_before_anything_is_made() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "no linux section",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("linux");
            }),
        ),
        (
            "process.args is empty",
            Box::new(|c| c["process"]["args"] = serde_json::json!([])),
        ),
        (
            "not absolute",
            Box::new(|c| c["process"]["cwd"] = "relative".into()),
        ),
        (
            "ioPriority.priority 9",
            Box::new(|c| {
                c["process"]["ioPriority"] =
                    serde_json::json!({"class": "IOPRIO_CLASS_BE", "priority": 9})
            }),
        ),
        (
            "listenerPath is not set",
            Box::new(|c| {
                c["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]})
            }),
        ),
        (
            "needs a new time namespace",
            Box::new(|c| c["linux"]["timeOffsets"] = serde_json::json!({"monotonic": {"secs": 1}})),
        ),
        (
            "SELinux",
            Box::new(|c| c["process"]["selinuxLabel"] = "a:b:c:s0".into()),
        ),
        (
            "unable to set hostname without a private UTS namespace",
            Box::new(|c| c["hostname"] = "h".into()),
        ),
        (
            "unable to set domainname without a private UTS namespace",
            Box::new(|c| c["domainname"] = "d".into()),
        ),
        (
            "unknown mount propagation",
            Box::new(|c| c["linux"]["rootfsPropagation"] = "sideways".into()),
        ),
    ];
    for (want, edit) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let b = bundle(tmp.path(), edit);
        refused("c1", &b, want);
    }
}

/// The valid config without its mount namespace, then `edit`.
fn no_mount_ns(edit: impl FnOnce(&mut serde_json::Value) + 'static) -> Edit {
    Box::new(move |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        edit(c)
    })
}

/// Without a mount namespace nothing may be mounted (runc would mount in the caller's
/// namespace): what needs a mount is refused before anything is made, masked and
/// read-only paths with runc's own error.
#[test]
fn without_a_mount_namespace_what_needs_a_mount_is_refused() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "unable to restrict sys entries without a private MNT namespace",
            no_mount_ns(|c| c["linux"]["maskedPaths"] = serde_json::json!(["/proc/kcore"])),
        ),
        (
            "unable to restrict sys entries without a private MNT namespace",
            no_mount_ns(|c| c["linux"]["readonlyPaths"] = serde_json::json!(["/proc/sys"])),
        ),
        (
            "mount /proc: without a mount namespace of its own the container cannot mount",
            no_mount_ns(|c| {
                c["mounts"] =
                    serde_json::json!([{"destination": "/proc", "type": "proc", "source": "proc"}])
            }),
        ),
        (
            "root.readonly needs a mount namespace",
            no_mount_ns(|c| c["root"]["readonly"] = true.into()),
        ),
        (
            "linux.rootfsPropagation \"rshared\" needs a mount namespace",
            no_mount_ns(|c| c["linux"]["rootfsPropagation"] = "rshared".into()),
        ),
        (
            "a user namespace needs a mount namespace too",
            no_mount_ns(|c| {
                c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "user"}])
            }),
        ),
    ];
    for (want, edit) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let b = bundle(tmp.path(), edit);
        refused("c1", &b, want);
    }
}

/// The valid config (mount and PID namespaces) with `namespaces` added and `sysctl`.
fn sysctl_in(namespaces: serde_json::Value, sysctl: serde_json::Value) -> Edit {
    Box::new(move |c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.extend(namespaces.as_array().unwrap().iter().cloned());
        c["linux"]["sysctl"] = sysctl;
    })
}

/// A sysctl outside the container's own namespaces would set the host's value: refused
/// as runc's validator refuses it (its messages), before anything is made; so is a key
/// that is not a plain dotted name.
#[test]
fn sysctls_outside_the_containers_namespaces_are_refused() {
    use serde_json::json;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "sysctl \"net.ipv4.ip_forward\" not allowed in host network namespace",
            sysctl_in(json!([{"type": "ipc"}, {"type": "uts"}]), json!({"net.ipv4.ip_forward": "1"})),
        ),
        (
            "sysctl \"net.ipv4.ip_forward\" not allowed in host network namespace",
            sysctl_in(
                json!([{"type": "network", "path": "/proc/self/ns/net"}]),
                json!({"net.ipv4.ip_forward": "1"}),
            ),
        ),
        (
            "invalid netns path: stat /nonexistent: no such file or directory",
            sysctl_in(
                json!([{"type": "network", "path": "/nonexistent"}]),
                json!({"net.ipv4.ip_forward": "1"}),
            ),
        ),
        (
            "sysctl \"kernel.msgmax\" is not allowed in the hosts ipc namespace",
            sysctl_in(json!([{"type": "network"}]), json!({"kernel.msgmax": "8192"})),
        ),
        (
            "sysctl \"fs.mqueue.msg_max\" is not allowed in the hosts ipc namespace",
            sysctl_in(json!([{"type": "uts"}]), json!({"fs.mqueue.msg_max": "10"})),
        ),
        (
            // Stricter than runc: a path to our own IPC namespace is the host's.
            "sysctl \"kernel.shmmax\" is not allowed in the hosts ipc namespace",
            sysctl_in(
                json!([{"type": "ipc", "path": "/proc/self/ns/ipc"}]),
                json!({"kernel.shmmax": "1"}),
            ),
        ),
        (
            "sysctl \"kernel.hostname\" is not in a separate kernel namespace",
            sysctl_in(json!([{"type": "ipc"}]), json!({"kernel.hostname": "h"})),
        ),
        (
            "sysctl \"kernel.domainname\" is not in a separate kernel namespace",
            sysctl_in(json!([]), json!({"kernel.domainname": "d"})),
        ),
        (
            "sysctl \"kernel.hostname\" is not allowed as it conflicts with the OCI \"hostname\" field",
            sysctl_in(json!([{"type": "uts"}]), json!({"kernel.hostname": "h"})),
        ),
        (
            "sysctl \"vm.swappiness\" is not in a separate kernel namespace",
            sysctl_in(
                json!([{"type": "network"}, {"type": "ipc"}, {"type": "uts"}]),
                json!({"vm.swappiness": "10"}),
            ),
        ),
        (
            "sysctl \"kernel.pid_max\" is not in a separate kernel namespace",
            sysctl_in(json!([{"type": "ipc"}]), json!({"kernel.pid_max": "10000"})),
        ),
        // Keys that are not plain dotted names, even in the right namespace.
        (
            "sysctl \"net.ipv4/../../kernel/hostname\" is not a plain dotted name",
            sysctl_in(json!([{"type": "network"}]), json!({"net.ipv4/../../kernel/hostname": "x"})),
        ),
        (
            "sysctl \"net/ipv4/ip_forward\" is not a plain dotted name",
            sysctl_in(json!([{"type": "network"}]), json!({"net/ipv4/ip_forward": "1"})),
        ),
        (
            "sysctl \"net..ipv4.ip_forward\" is not a plain dotted name",
            sysctl_in(json!([{"type": "network"}]), json!({"net..ipv4.ip_forward": "1"})),
        ),
        (
            "sysctl \"\" is not a plain dotted name",
            sysctl_in(json!([{"type": "network"}]), json!({"": "1"})),
        ),
        // With several bad ones the first in sorted order is named.
        (
            "sysctl \"kernel.msgmax\" is not allowed in the hosts ipc namespace",
            sysctl_in(
                json!([]),
                json!({"vm.swappiness": "1", "net.ipv4.ip_forward": "1", "kernel.msgmax": "1"}),
            ),
        ),
    ];
    for (want, edit) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let b = bundle(tmp.path(), edit);
        refused("c1", &b, want);
    }
}

/// Sysctls in the container's own namespaces pass the check and create goes on.
#[test]
fn sysctls_in_the_containers_own_namespaces_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(
        tmp.path(),
        sysctl_in(
            serde_json::json!([{"type": "network"}, {"type": "ipc"}, {"type": "uts"}]),
            serde_json::json!({"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                "kernel.msgmax": "8192", "fs.mqueue.msg_max": "10", "kernel.domainname": "d"}),
        ),
    );
    let host = RecordingHost::new();
    let rt = Runtime::with_host(tmp.path().join("state"), Arc::new(host.clone()));
    rt.create(&CreateOpts::new("c1", &b)).unwrap();
    assert!(host.calls().iter().any(|c| matches!(c, Call::Spawn { .. })));
}

#[test]
fn an_id_already_taken_is_refused_and_the_other_container_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path(), |c| c["process"]["args"] = serde_json::json!([]));
    let root = tmp.path().join("state");
    std::fs::create_dir_all(root.join("c1")).unwrap();
    std::fs::write(root.join("c1/state.json"), b"{}").unwrap();
    let host = RecordingHost::new();
    let rt = Runtime::with_host(&root, Arc::new(host.clone()));
    let e = rt.create(&CreateOpts::new("c1", &b)).unwrap_err();
    assert!(
        matches!(e.kind(), virtkit_runtime::Error::Exists { .. }),
        "{e}"
    );
    assert_eq!(std::fs::read(root.join("c1/state.json")).unwrap(), b"{}");
}
