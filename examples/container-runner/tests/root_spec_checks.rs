//! Spec fields that runc refuses are refused here too (issue #14 item 3), with a clear
//! error and nothing left behind: `/proc` or `/sys` that the image made a symbolic link
//! (or a file). Needs root and busybox.
#![allow(clippy::unwrap_used)]

mod common;
use common::{cgroup_dir, lock, require_root_and_busybox, Bundle};

#[test]
fn root_proc_or_sys_through_a_symlink_is_refused() {
    let _g = lock();
    require_root_and_busybox();
    for (dir, target) in [("proc", "/tmp"), ("sys", "/etc"), ("proc", "file")] {
        let b = Bundle::new(&["true"], |_| {});
        let p = b.path().join("rootfs").join(dir);
        std::fs::remove_dir(&p).unwrap();
        if target == "file" {
            std::fs::write(&p, b"not a directory").unwrap();
        } else {
            std::os::unix::fs::symlink(target, &p).unwrap();
        }
        let id = format!("vk-spec-{dir}-{}", target.trim_start_matches('/'));
        let bundle = b.path().to_str().unwrap().to_string();
        let o = b.rt(&["create", "--bundle", &bundle, &id]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{dir} -> {target}: create succeeded");
        assert!(
            err.contains("must be mounted on an ordinary directory"),
            "{dir} -> {target}: {err}"
        );
        // Nothing left: no state, no cgroup.
        assert!(!b.state_root.join(&id).exists(), "state left for {id}");
        assert!(!cgroup_dir("memory", &id).exists(), "cgroup left for {id}");
    }
    // The same bundle with real directories runs.
    let b = Bundle::new(&["true"], |_| {});
    let bundle = b.path().to_str().unwrap().to_string();
    b.ok(&["run", "--bundle", &bundle, "vk-spec-ok"]);
}
