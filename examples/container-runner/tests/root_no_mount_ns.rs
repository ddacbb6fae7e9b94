//! A config without a mount namespace (issue #14): the container runs in a `chroot` of
//! its rootfs and makes no mount at all; the caller's mount table is the same afterwards,
//! byte for byte. runc 1.1.5 is the control: the same bundle (a rootfs that is a mount
//! point with its own /proc, as runc needs one) run by both shows the process the same
//! root, working directory, mounts, /dev, hostname and the caller's mount namespace;
//! runc, unlike us, mounts in the caller's namespace (so it runs in a throwaway one).
//! Each run is made under a private-like (slave) and a shared `/`. Needs root, busybox
//! and runc.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;

mod common;
use common::{in_slave_mount_namespace, lock, require_root_and_busybox, Bundle, BIN};

/// What the container's process reports, one `key=value` line each.
const PROBE: &str = "echo ls=$(ls / | tr '\\n' ' '); echo pwd=$(pwd); \
    echo mounts=$(cut -d' ' -f5 /proc/self/mountinfo | sort -u | tr '\\n' ' '); \
    echo dev=$(ls /dev | tr '\\n' ' '); echo hostname=$(hostname); \
    echo mntns=$(readlink /proc/self/ns/mnt); echo root=$(readlink /proc/self/root); \
    touch /written && echo writable=yes";

/// A busybox bundle without a mount namespace (nor mounts, masked or read-only paths,
/// a read-only root), with cwd /tmp and a hostname in a new UTS namespace.
fn bundle(args: &[&str]) -> Bundle {
    Bundle::new(args, |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "uts"},
            {"type": "ipc"}, {"type": "network"}]);
        c["mounts"] = serde_json::json!([]);
        let linux = c["linux"].as_object_mut().unwrap();
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
        c["root"]["readonly"] = false.into();
        c["process"]["cwd"] = "/tmp".into();
        c["hostname"] = "no-mnt-ns".into();
    })
}

/// The `key=value` lines of `out` from `start` on, up to the next `==` line.
fn section(out: &str, start: &str) -> BTreeMap<String, String> {
    out.lines()
        .skip_while(|l| *l != start)
        .skip(1)
        .take_while(|l| !l.starts_with("=="))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn root_no_mount_namespace_as_runc_sees_it() {
    let _g = lock();
    require_root_and_busybox();
    for shared in [false, true] {
        let b = bundle(&["sh", "-c", PROBE]);
        let bundle = b.path().canonicalize().unwrap();
        // The rootfs a mount point with a /proc (runc cannot start a process without
        // one), in this test's own mount namespace. Before each run: a fresh /dev (both
        // runtimes make its nodes) and no mark of the last run.
        let script = format!(
            "r={bundle}/rootfs; mount --bind $r $r && mount -t proc proc $r/proc || exit 9; \
             fresh() {{ rm -rf $r/dev/* $r/written; }}; echo mntns=$(readlink /proc/self/ns/mnt); \
             fresh; cat /proc/self/mountinfo > {bundle}/before; echo '== ours'; \
             {bin} --root {bundle}/state run --bundle {bundle} vk-nomnt </dev/null; echo rc=$?; \
             cat /proc/self/mountinfo > {bundle}/after; \
             cmp -s {bundle}/before {bundle}/after && echo mountinfo=unchanged; \
             fresh; echo '== runc'; unshare -m --propagation slave \
             runc --root {bundle}/runc-state run --bundle {bundle} vk-nomnt-runc </dev/null; \
             echo rc=$?; echo '=='",
            bundle = bundle.display(),
            bin = BIN,
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        let o = in_slave_mount_namespace(&mut cmd, shared).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let ctx = format!(
            "shared={shared}\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let caller_ns = out.lines().next().unwrap_or_default().to_string();
        let (ours, runc) = (section(&out, "== ours"), section(&out, "== runc"));
        assert_eq!(ours.get("rc").map(String::as_str), Some("0"), "{ctx}");
        assert_eq!(runc.get("rc").map(String::as_str), Some("0"), "{ctx}");
        assert_eq!(
            ours.get("mountinfo").map(String::as_str),
            Some("unchanged"),
            "{ctx}"
        );
        assert_eq!(
            format!("mntns={}", ours["mntns"]),
            caller_ns,
            "no mount namespace of its own: {ctx}"
        );
        for key in ["ls", "pwd", "mounts", "dev", "hostname", "root", "writable"] {
            assert_eq!(ours.get(key), runc.get(key), "{key}: {ctx}");
        }
        assert_eq!(ours["ls"], "bin dev etc proc root sys tmp", "{ctx}");
        assert_eq!(
            (ours["pwd"].as_str(), ours["mounts"].as_str()),
            ("/tmp", "/ /proc"),
            "{ctx}"
        );
        assert_eq!(ours["hostname"], "no-mnt-ns", "{ctx}");
    }
}

/// Straight from the test process (no mount namespace of the test's own, a rootfs with
/// no /proc mounted): the container and a process `exec`'d into it see its root (runc
/// 1.1.5 leaves an exec'd process on the host's root), `delete` leaves nothing, masked
/// paths and a hostname without a UTS namespace get runc's errors from both runtimes,
/// and the test process's mount table is the same afterwards.
#[test]
fn root_no_mount_namespace_leaves_the_callers_mounts_alone() {
    let _g = lock();
    require_root_and_busybox();
    let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let b = bundle(&["sleep", "1000"]);
    let id = "vk-nomnt-exec";
    b.create(id);
    b.ok(&["start", id]);
    let ls = b.ok(&["exec", "--cwd", "/etc", id, "sh", "-c", "ls /; pwd"]);
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        ["bin", "dev", "etc", "proc", "root", "sys", "tmp", "/etc"],
        "exec is not in the container's root"
    );
    let fd = b.ok(&["exec", id, "sh", "-c", "echo x > /dev/null && ls /dev/null"]);
    assert_eq!(fd.trim(), "/dev/null");
    b.ok(&["delete", "--force", id]);
    assert!(!b.state_root.join(id).exists());
    assert!(!common::cgroup_dir("pids", id).exists());
    // runc's errors from both, before anything is made: masked paths; a hostname
    // without a UTS namespace.
    let b = Bundle::new(&["true"], |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "uts"}]);
        c["mounts"] = serde_json::json!([]);
    });
    let masked = "unable to restrict sys entries without a private MNT namespace";
    let hostname = "unable to set hostname without a private UTS namespace";
    let no_uts = b.path().join("no-uts");
    std::fs::create_dir(&no_uts).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.path().join("config.json")).unwrap()).unwrap();
    cfg["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
    let rootfs = b.path().join("rootfs").canonicalize().unwrap();
    cfg["root"]["path"] = rootfs.to_str().unwrap().into();
    std::fs::write(no_uts.join("config.json"), cfg.to_string()).unwrap();
    for (bundle, want) in [(b.path(), masked), (no_uts.as_path(), hostname)] {
        for bin in [BIN, "runc"] {
            let args = ["run", "--bundle", bundle.to_str().unwrap(), "vk-nomnt-bad"];
            let o = b.rt_with(bin, &b.state_root, &args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(want), "{bin}: {err}");
        }
    }
    assert!(!b.state_root.join("vk-nomnt-bad").exists());
    let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(before, after, "the caller's mount table changed");
}
