//! Spec fields honoured or refused as runc does (issue #14 item 3): `/proc` or `/sys`
//! that the image made a symbolic link (or a file) is refused with a clear error and
//! nothing left behind; the recursive mount options (`rnoexec`, `rnosuid`...) reach
//! every mount of a bound tree. Needs root and busybox.
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

/// Unmounts a host mount when dropped (the test mounts a tmpfs under its own tempdir).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn root_recursive_mount_options_reach_submounts() {
    let _g = lock();
    require_root_and_busybox();
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "vk-rec-test"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs for the test");
    let _u = Unmount(sub.clone());
    let src = host.path().to_str().unwrap().to_string();
    let show = "grep -E ' /data(/sub)? ' /proc/self/mountinfo";
    for (opts, want, unwanted) in [
        (
            vec!["rbind", "rnoexec", "rnosuid"],
            vec!["noexec", "nosuid"],
            vec![],
        ),
        (
            vec!["rbind", "rnoexec", "rexec", "rnodev"],
            vec!["nodev"],
            vec!["noexec"],
        ),
        (vec!["rbind", "rro"], vec!["ro"], vec![]),
    ] {
        let b = Bundle::new(&["sh", "-c", show], |c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(serde_json::json!({
                "destination": "/data", "type": "bind", "source": src, "options": opts,
            }));
        });
        let bundle = b.path().to_str().unwrap().to_string();
        let out = b.ok(&["run", "--bundle", &bundle, "vk-rec-opts"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{opts:?}: /data and /data/sub: {out}");
        for l in &lines {
            // Field 6: the per-mount options.
            let mount_opts: Vec<&str> = l.split(' ').nth(5).unwrap().split(',').collect();
            for w in &want {
                assert!(mount_opts.contains(w), "{opts:?}: {w} missing in {l}");
            }
            for u in &unwanted {
                assert!(!mount_opts.contains(u), "{opts:?}: {u} present in {l}");
            }
        }
    }
}

#[test]
fn root_readonly_root_in_a_user_namespace_keeps_locked_flags() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(
        &["sh", "-c", "grep ' / / ' /proc/self/mountinfo; touch /x"],
        |c| {
            c["root"]["readonly"] = true.into();
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "user"}));
            c["linux"]["uidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
            c["linux"]["gidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
        },
    );
    // The rootfs on a nosuid,nodev mount: in the container's user namespace those flags
    // are locked, and a read-only remount that drops them is refused (EPERM).
    let rootfs = b.path().join("rootfs");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "nosuid,nodev,mode=755", "vk-ro-userns"])
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success());
    let _u = Unmount(rootfs.clone());
    common::busybox_rootfs(&rootfs);
    let bundle = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bundle, "vk-ro-userns"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // `touch /x` fails on the read-only root: run exits non-zero, after printing /.
    let root_line = out.lines().next().unwrap_or_default();
    let flags: Vec<&str> = root_line
        .split(' ')
        .nth(5)
        .unwrap_or("")
        .split(',')
        .collect();
    assert!(flags.contains(&"ro"), "root not read-only: {out}\n{err}");
    assert!(
        flags.contains(&"nosuid") && flags.contains(&"nodev"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("Read-only file system"),
        "touch should fail: {err}"
    );
    assert!(!o.status.success());
}

#[test]
fn root_hooks_env_and_failures_as_the_spec_says() {
    let _g = lock();
    require_root_and_busybox();
    let host = tempfile::tempdir().unwrap();
    let h = host.path().to_str().unwrap().to_string();
    let b = Bundle::new(&["true"], |c| {
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_PROCESS=yes"]);
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/hostdir", "type": "bind", "source": h, "options": ["rbind", "rw"]
        }));
        c["hooks"] = serde_json::json!({
            // No env: the container process's environment (as runc gives it).
            "startContainer": [
                {"path": "/bin/sh", "args": ["sh", "-c", "env > /hostdir/start-noenv"]},
                {"path": "/bin/sh", "args": ["sh", "-c", "env > /hostdir/start-env"],
                 "env": ["ONLY=this"]},
            ],
            // A failing poststop hook is a warning; the next one still runs.
            "poststop": [
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]},
                {"path": "/bin/sh", "args": ["sh", "-c", format!("touch {h}/poststop-2")]},
            ],
        });
    });
    let bs = b.path().to_str().unwrap().to_string();
    b.ok(&["run", "--bundle", &bs, "vk-hook-env"]);
    let noenv = std::fs::read_to_string(host.path().join("start-noenv")).unwrap();
    assert!(noenv.lines().any(|l| l == "FROM_PROCESS=yes"), "{noenv}");
    let env = std::fs::read_to_string(host.path().join("start-env")).unwrap();
    assert!(env.lines().any(|l| l == "ONLY=this"), "{env}");
    assert!(!env.contains("FROM_PROCESS"), "{env}");
    assert!(
        host.path().join("poststop-2").exists(),
        "the poststop hook after a failing one did not run"
    );
    assert!(!b.state_root.join("vk-hook-env").exists(), "state left");
}

#[test]
fn root_tmpcopyup_starts_the_tmpfs_with_the_images_files() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "grep ' /etc ' /proc/self/mountinfo | cut -d' ' -f9; \
             stat -c '%a %u %g' /etc/secret /etc/sub; cat /etc/secret; readlink /etc/link; \
             echo new > /etc/newfile",
        ],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "tmpcopyup", "mode=755"],
            }));
        },
    );
    let etc = b.path().join("rootfs/etc");
    std::fs::write(etc.join("secret"), b"from-image\n").unwrap();
    std::fs::create_dir(etc.join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", etc.join("link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    // Readable by others: the container's root has no CAP_DAC_OVERRIDE.
    std::fs::set_permissions(etc.join("secret"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::lchown(etc.join("secret"), Some(123), Some(456)).unwrap();
    std::os::unix::fs::lchown(etc.join("sub"), Some(7), Some(8)).unwrap();
    let bundle = b.path().to_str().unwrap().to_string();
    let out = b.ok(&["run", "--bundle", &bundle, "vk-copyup"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "tmpfs", "/etc is a tmpfs: {out}");
    assert_eq!(lines[1], "604 123 456", "{out}");
    assert_eq!(lines[2], "755 7 8", "{out}");
    assert_eq!(lines[3], "from-image", "{out}");
    assert_eq!(lines[4], "/etc/passwd", "{out}");
    // The write went to the tmpfs, not into the image.
    assert!(
        !etc.join("newfile").exists(),
        "written through to the image"
    );
    // tmpcopyup on a bind mount is refused, not ignored.
    let b = Bundle::new(&["true"], |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/mnt", "type": "bind", "source": "/tmp",
            "options": ["rbind", "tmpcopyup"],
        }));
    });
    let bundle = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bundle, "vk-copyup-bind"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tmpcopyup applies to tmpfs mounts only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn root_process_placement_fields_are_honoured() {
    let _g = lock();
    require_root_and_busybox();
    let script = "ionice -p $$; cat /proc/self/personality; \
                  cut -d' ' -f19,41 /proc/self/stat; \
                  grep -m1 -o 'bind:[0-9]*' /proc/self/numa_maps; \
                  cut -d. -f1 /proc/uptime";
    let b = Bundle::new(&["sh", "-c", script], |c| {
        c["process"]["ioPriority"] =
            serde_json::json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
        c["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_BATCH", "nice": 5});
        c["linux"]["personality"] = serde_json::json!({"domain": "LINUX32"});
        c["linux"]["memoryPolicy"] = serde_json::json!({"mode": "MPOL_BIND", "nodes": "0"});
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "time"}));
        c["linux"]["timeOffsets"] =
            serde_json::json!({"boottime": {"secs": 10_000_000, "nanosecs": 0}});
    });
    let bundle = b.path().to_str().unwrap().to_string();
    let out = b.ok(&["run", "--bundle", &bundle, "vk-placement"]);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "idle", "ioPriority: {out}");
    assert_eq!(l[1], "00000008", "personality LINUX32: {out}");
    assert_eq!(l[2], "5 3", "nice 5, SCHED_BATCH (3): {out}");
    assert_eq!(l[3], "bind:0", "memoryPolicy MPOL_BIND: {out}");
    let up: u64 = l[4].parse().unwrap();
    assert!(
        up >= 10_000_000,
        "boottime offset in the time namespace: {out}"
    );

    // execCPUAffinity: for exec's processes.
    let b = Bundle::new(&["sleep", "100"], |_| {});
    let id = "vk-affinity";
    b.create(id);
    b.ok(&["start", id]);
    let p = b.path().join("proc.json");
    std::fs::write(
        &p,
        r#"{"cwd": "/", "args": ["grep", "Cpus_allowed_list", "/proc/self/status"],
            "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
            "execCPUAffinity": {"initial": "0", "final": "1"}}"#,
    )
    .unwrap();
    let out = b.ok(&["exec", "--process", p.to_str().unwrap(), id]);
    assert_eq!(out.split_whitespace().last(), Some("1"), "{out}");
    b.ok(&["delete", "--force", id]);

    // Bad values: a clear error before anything starts.
    for (edit, want) in [
        (
            serde_json::json!({"process": {"ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 9}}}),
            "ioPriority.priority 9",
        ),
        (
            serde_json::json!({"linux": {"timeOffsets": {"monotonic": {"secs": 1}}}}),
            "needs a new time namespace",
        ),
    ] {
        let b = Bundle::new(&["true"], |c| {
            for (k, v) in edit.as_object().unwrap() {
                for (k2, v2) in v.as_object().unwrap() {
                    c[k][k2] = v2.clone();
                }
            }
        });
        let bundle = b.path().to_str().unwrap().to_string();
        let o = b.rt(&["run", "--bundle", &bundle, "vk-placement-bad"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
        assert!(!b.state_root.join("vk-placement-bad").exists());
    }
}

#[test]
fn root_each_container_gets_its_own_session_keyring_unless_no_new_keyring() {
    let _g = lock();
    require_root_and_busybox();
    // The default config masks /proc/keys: unmask it to look.
    let b = Bundle::new(
        &["sh", "-c", "grep -o '_ses[.a-z0-9-]*' /proc/keys | sort -u"],
        |c| {
            c["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .retain(|p| p != "/proc/keys");
        },
    );
    let bundle = b.path().to_str().unwrap().to_string();
    let out = b.ok(&["run", "--bundle", &bundle, "vk-keyring"]);
    assert!(
        out.lines().any(|l| l == "_ses.vk-keyring"),
        "no keyring of its own: {out}"
    );
    let out = b.ok(&[
        "run",
        "--no-new-keyring",
        "--bundle",
        &bundle,
        "vk-keyring-no",
    ]);
    assert!(
        !out.contains("_ses.vk-keyring-no"),
        "--no-new-keyring made one: {out}"
    );
}

#[test]
fn root_lsm_settings_are_refused_where_the_host_lacks_them() {
    let _g = lock();
    require_root_and_busybox();
    let apparmor_on = std::fs::read("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|b| b.first() == Some(&b'Y'))
        && std::path::Path::new("/sys/kernel/security/apparmor").exists();
    if apparmor_on {
        // With AppArmor on, a profile is applied: "unconfined" always exists.
        let b = Bundle::new(&["cat", "/proc/self/attr/current"], |c| {
            c["process"]["apparmorProfile"] = "unconfined".into()
        });
        let bundle = b.path().to_str().unwrap().to_string();
        let out = b.ok(&["run", "--bundle", &bundle, "vk-lsm-aa"]);
        assert!(out.contains("unconfined"), "{out}");
    }
    let mut refused = vec![(
        "selinuxLabel",
        "system_u:system_r:container_t:s0",
        "SELinux",
    )];
    if !apparmor_on {
        refused.push((
            "apparmorProfile",
            "docker-default",
            "AppArmor is not enabled",
        ));
    }
    for (field, value, want) in refused {
        let b = Bundle::new(&["true"], |c| c["process"][field] = value.into());
        let bundle = b.path().to_str().unwrap().to_string();
        let o = b.rt(&["run", "--bundle", &bundle, "vk-lsm"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{field}: {err}");
        assert!(!b.state_root.join("vk-lsm").exists());
    }
    let b = Bundle::new(&["sleep", "100"], |_| {});
    b.create("vk-lsm-exec");
    b.ok(&["start", "vk-lsm-exec"]);
    let mut bad_flags = vec![&["--process-label", "y"][..]];
    if !apparmor_on {
        bad_flags.push(&["--apparmor", "x"][..]);
    }
    for flags in bad_flags {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["vk-lsm-exec", "true"]);
        let o = b.rt(&args);
        assert!(!o.status.success(), "{flags:?} was accepted");
    }
    b.ok(&["delete", "--force", "vk-lsm-exec"]);
}
