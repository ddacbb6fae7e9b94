//! `rootfsPropagation` and volume propagation on a host whose `/` is shared (issue #14,
//! item 2), through container-runner. Needs root and /bin/busybox.
//!
//! Every systemd host has a shared `/`. The test makes such a host without touching the
//! real one: a mount namespace whose `/` is a slave of the real `/`, shared again. In it,
//! a container with `rootfsPropagation: rshared` and an rshared volume (Docker's
//! `-v src:dst:rshared`) mounts a tmpfs under the volume. Afterwards the host must see
//! that mount under the volume's source, and nothing else of the container's.
//!
//! The rootfs is a mount point of its own, as with Docker's and podman's overlay rootfs:
//! the runtime makes the mount holding the rootfs private (or pivot_root fails and the
//! set-up would reach the host), so a volume whose source sits on that same mount cannot
//! propagate back. runc has the same limit.
#![allow(clippy::unwrap_used)]

use std::process::Command;

mod common;
use common::{in_slave_mount_namespace, lock, require_root_and_busybox, Bundle, BIN};

#[test]
fn root_rshared_rootfs_and_volume_on_a_shared_host() {
    let _g = lock();
    require_root_and_busybox();
    let vol = tempfile::tempdir().unwrap();
    let vol = vol.keep();
    std::fs::create_dir(vol.join("sub")).unwrap();
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "mount -t tmpfs inner /vol/sub && echo mounted && grep -c . /proc/self/mountinfo",
        ],
        |c| {
            c["linux"]["rootfsPropagation"] = "rshared".into();
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(serde_json::json!({
                "destination": "/vol", "type": "bind", "source": vol.to_str().unwrap(),
                "options": ["rbind", "rw", "rshared"]
            }));
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set]
                    .as_array_mut()
                    .unwrap()
                    .push("CAP_SYS_ADMIN".into());
            }
        },
    );
    std::fs::create_dir(b.path().join("rootfs/vol")).unwrap();
    let bundle = b.path().canonicalize().unwrap();
    let script = format!(
        "mount --bind {bundle}/rootfs {bundle}/rootfs || exit 9; \
         {bin} --root {state} run --bundle {bundle} vk-prop; echo rc=$?; \
         echo leaked=$(grep -c ' {bundle}/rootfs/' /proc/self/mountinfo); \
         echo back=$(grep -c ' {vol}/sub ' /proc/self/mountinfo)",
        bin = BIN,
        state = b.state_root.display(),
        bundle = bundle.display(),
        vol = vol.display(),
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script]);
    in_slave_mount_namespace(&mut cmd, true);
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let _ = std::fs::remove_dir_all(&vol);
    let has = |l: &str| out.lines().any(|x| x.trim() == l);
    assert!(has("mounted") && has("rc=0"), "{out}\n{err}");
    assert!(
        has("leaked=0"),
        "the container's mounts reached the host: {out}\n{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.strip_prefix("back=").is_some_and(|n| n != "0")),
        "the mount under the rshared volume did not come back to the host: {out}\n{err}"
    );
}
