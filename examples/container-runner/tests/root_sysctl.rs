//! `linux.sysctl` outside the container's own namespaces would set the host's values
//! (`net.*` without a network namespace, the IPC ones without an IPC namespace,
//! `kernel.domainname` without a UTS namespace, anything not namespaced at all). runc
//! 1.1.5 is the control: the same bundles are refused by both runtimes, with runc's
//! messages, nothing is left behind and the host's sysctls are unchanged; in the
//! container's own network namespace (new, or joined by path) both set it there only.
//! Needs root, busybox and runc.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

mod common;
use common::{cgroup_dir, lock, require_root_and_busybox, Bundle, BIN};

/// The host sysctls a leak would change, as read before the test (restored on drop if a
/// runtime changed one, so a failing test leaves the host as it was).
struct HostSysctls(Vec<(PathBuf, String)>);

const WATCHED: [&str; 5] = [
    "net/ipv4/ip_forward",
    "kernel/msgmax",
    "fs/mqueue/msg_max",
    "kernel/domainname",
    "vm/swappiness",
];

impl HostSysctls {
    fn read() -> Self {
        HostSysctls(
            WATCHED
                .iter()
                .map(|k| {
                    let p = Path::new("/proc/sys").join(k);
                    let v = std::fs::read_to_string(&p).unwrap();
                    (p, v)
                })
                .collect(),
        )
    }

    /// The value of `key` (as in [`WATCHED`]) before the test.
    fn get(&self, key: &str) -> &str {
        let p = Path::new("/proc/sys").join(key);
        self.0.iter().find(|(q, _)| *q == p).unwrap().1.trim()
    }

    /// A value of `key` other than the host's, so that a leak shows.
    fn other(&self, key: &str) -> String {
        let v = self.get(key);
        match v.parse::<u64>() {
            Ok(0) => "1".into(),
            Ok(n) => (n - 1).to_string(),
            Err(_) => format!("{v}vk-leak"),
        }
    }

    /// The sysctls whose value is not what it was.
    fn changed(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(p, v)| std::fs::read_to_string(p).ok().as_ref() != Some(v))
            .map(|(p, _)| p.display().to_string())
            .collect()
    }
}

impl Drop for HostSysctls {
    fn drop(&mut self) {
        for (p, v) in &self.0 {
            if std::fs::read_to_string(p).ok().as_ref() != Some(v) {
                let _ = std::fs::write(p, v.trim());
            }
        }
    }
}

/// The error message in a runtime's stderr (logrus's `msg="..."`, unescaped), without
/// runc's `runc create failed: ` in front.
fn message(stderr: &str) -> String {
    let m = stderr
        .lines()
        .filter_map(|l| l.split_once("msg=\"").map(|(_, m)| m))
        .next_back()
        .unwrap_or(stderr);
    let m = m.strip_suffix('"').unwrap_or(m).replace("\\\"", "\"");
    m.strip_prefix("runc create failed: ")
        .unwrap_or(&m)
        .to_string()
}

/// The default config without the namespaces `drop` (and without a hostname when it
/// drops "uts"), with `sysctl`.
fn bundle(drop: &[&str], sysctl: serde_json::Value, args: &[&str]) -> Bundle {
    Bundle::new(args, |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| !drop.contains(&n["type"].as_str().unwrap()));
        if drop.contains(&"uts") {
            c.as_object_mut().unwrap().remove("hostname");
        }
        c["linux"]["sysctl"] = sysctl;
    })
}

#[test]
fn root_sysctls_outside_the_containers_namespaces_are_refused_as_runc_does() {
    let _g = lock();
    require_root_and_busybox();
    let host = HostSysctls::read();
    let other = |k: &str| host.other(k);

    let cases = [
        (
            vec!["network"],
            json!({"net.ipv4.ip_forward": other("net/ipv4/ip_forward")}),
        ),
        (
            vec!["ipc"],
            json!({"kernel.msgmax": other("kernel/msgmax")}),
        ),
        (
            vec!["ipc"],
            json!({"fs.mqueue.msg_max": other("fs/mqueue/msg_max")}),
        ),
        (
            vec!["uts"],
            json!({"kernel.domainname": other("kernel/domainname")}),
        ),
        (vec![], json!({"kernel.hostname": "vk-leak"})),
        (vec![], json!({"vm.swappiness": other("vm/swappiness")})),
    ];
    for (i, (drop, sysctl)) in cases.into_iter().enumerate() {
        let b = bundle(&drop, sysctl.clone(), &["true"]);
        let bs = b.path().to_str().unwrap().to_string();
        let id = format!("vk-sysctl-{i}");
        let runc_state = b.path().join("runc-state");
        let o = b.rt_with("runc", &runc_state, &["create", "--bundle", &bs, &id]);
        let runc_err = message(&String::from_utf8_lossy(&o.stderr));
        assert!(!o.status.success(), "runc accepted {sysctl}");
        assert!(
            runc_err.starts_with("sysctl \""),
            "{sysctl}: runc: {runc_err}"
        );
        let o = b.rt(&["create", "--bundle", &bs, &id]);
        assert!(!o.status.success(), "container-runner accepted {sysctl}");
        let ours = message(&String::from_utf8_lossy(&o.stderr));
        assert_eq!(ours, runc_err, "{sysctl}: runc's message");
        assert!(!b.state_root.join(&id).exists(), "{sysctl}: state left");
        assert!(!cgroup_dir("memory", &id).exists(), "{sysctl}: cgroup left");
        assert_eq!(
            host.changed(),
            Vec::<String>::new(),
            "{sysctl}: host changed"
        );
    }
    // The host's network namespace by path; and a key that leaves /proc/sys (runc turns
    // each dot into a '/', so it fails in init; we refuse the key).
    let b = bundle(&["network"], json!({}), &["true"]);
    let cases = [
        (
            json!([{"type": "network", "path": "/proc/self/ns/net"}]),
            json!({"net.ipv4.ip_forward": other("net/ipv4/ip_forward")}),
            "not allowed in host network namespace",
        ),
        (
            json!([{"type": "network"}]),
            json!({"net.ipv4/../../kernel/domainname": "vk-leak"}),
            "is not a plain dotted name",
        ),
    ];
    let cfg_path = b.path().join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let bs = b.path().to_str().unwrap().to_string();
    for (ns, sysctl, want) in cases {
        let mut c = cfg.clone();
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .extend(ns.as_array().unwrap().iter().cloned());
        c["linux"]["sysctl"] = sysctl.clone();
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let runc_state = b.path().join("runc-state");
        let o = b.rt_with(
            "runc",
            &runc_state,
            &["run", "--bundle", &bs, "vk-sysctl-r"],
        );
        assert!(!o.status.success(), "runc accepted {sysctl}");
        let o = b.rt(&["run", "--bundle", &bs, "vk-sysctl-r"]);
        let err = message(&String::from_utf8_lossy(&o.stderr));
        assert!(!o.status.success() && err.contains(want), "{sysctl}: {err}");
        assert!(
            !b.state_root.join("vk-sysctl-r").exists(),
            "{sysctl}: state"
        );
        assert_eq!(
            host.changed(),
            Vec::<String>::new(),
            "{sysctl}: host changed"
        );
    }
}

#[test]
fn root_net_sysctls_are_set_in_the_containers_own_network_namespace_only() {
    let _g = lock();
    require_root_and_busybox();
    let host = HostSysctls::read();
    let want = host.other("net/ipv4/ip_forward");
    let sysctl = json!({ "net.ipv4.ip_forward": want });
    let read = ["cat", "/proc/sys/net/ipv4/ip_forward"];
    // A network namespace to join by path.
    let mut holder = Command::new("unshare")
        .args(["-n", "sleep", "600"])
        .spawn()
        .unwrap();
    let netns = format!("/proc/{}/ns/net", holder.id());
    let t0 = std::time::Instant::now();
    while std::fs::read_link(&netns).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
        assert!(t0.elapsed().as_secs() < 10, "unshare -n did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let joined = json!({"type": "network", "path": netns});
    for (i, join) in [None, Some(joined)].into_iter().enumerate() {
        let b = bundle(&["network"], sysctl.clone(), &read);
        let cfg_path = b.path().join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(join.clone().unwrap_or(json!({"type": "network"})));
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let bs = b.path().to_str().unwrap().to_string();
        let id = format!("vk-sysctl-net-{i}");
        let runc_state = b.path().join("runc-state");
        for (bin, state) in [("runc", &runc_state), (BIN, &b.state_root)] {
            let o = b.rt_with(bin, state, &["run", "--bundle", &bs, &id]);
            let out = String::from_utf8_lossy(&o.stdout);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{bin} {join:?}: {err}");
            assert_eq!(out.trim(), want, "{bin} {join:?}: in the container");
            assert_eq!(host.changed(), Vec::<String>::new(), "{bin}: host changed");
        }
    }
    let _ = holder.kill();
    let _ = holder.wait();
}
