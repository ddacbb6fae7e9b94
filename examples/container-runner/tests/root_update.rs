//! `update` with runc's individual flags (issue #14 item 4): each reaches the container's
//! cgroup, flags override `--resources`, bad values change nothing. Needs root and
//! busybox; runs on the host's cgroup v1 controllers.
#![allow(clippy::unwrap_used)]

mod common;
use common::{cgroup_dir, lock, require_root_and_busybox, Bundle};

fn read(controller: &str, id: &str, file: &str) -> String {
    std::fs::read_to_string(cgroup_dir(controller, id).join(file))
        .unwrap_or_else(|e| panic!("{controller}/{file}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn root_update_flags_as_runc() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(&["sleep", "1000"], |_| {});
    let id = "vk-update-flags";
    b.create(id);
    b.ok(&["start", id]);
    b.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-reservation",
        "32M",
        "--pids-limit",
        "32",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        "--cpu-share",
        "512",
        "--cpuset-cpus",
        "0",
        id,
    ]);
    assert_eq!(read("memory", id, "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("memory", id, "memory.soft_limit_in_bytes"), "33554432");
    assert_eq!(read("pids", id, "pids.max"), "32");
    assert_eq!(read("cpu", id, "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu", id, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", id, "cpu.shares"), "512");
    assert_eq!(read("cpuset", id, "cpuset.cpus"), "0");

    // A flag overrides the same field of --resources; the document's other fields apply.
    let r = b.path().join("res.json");
    std::fs::write(&r, r#"{"pids": {"limit": 10}, "cpu": {"quota": 20000}}"#).unwrap();
    b.ok(&[
        "update",
        "--resources",
        r.to_str().unwrap(),
        "--pids-limit",
        "20",
        id,
    ]);
    assert_eq!(read("pids", id, "pids.max"), "20");
    assert_eq!(read("cpu", id, "cpu.cfs_quota_us"), "20000");

    // -1 lifts the limits.
    b.ok(&["update", "--cpu-quota", "-1", "--pids-limit", "-1", id]);
    assert_eq!(read("cpu", id, "cpu.cfs_quota_us"), "-1");
    assert_eq!(read("pids", id, "pids.max"), "max");

    // Bad values fail with a message and change nothing.
    for bad in [
        &["update", "--memory", "12q", id][..],
        &["update", "--blkio-weight", "5", id][..],
        &["update", "--pids-limit", "x", id][..],
    ] {
        let o = b.rt(bad);
        assert!(!o.status.success(), "{bad:?} succeeded");
        assert!(!o.stderr.is_empty(), "{bad:?}: no message");
    }
    assert_eq!(read("memory", id, "memory.limit_in_bytes"), "67108864");
    // An unknown container.
    assert!(!b
        .rt(&["update", "--memory", "1g", "vk-nope"])
        .status
        .success());
    b.ok(&["delete", "--force", id]);
}
