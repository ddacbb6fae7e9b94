//! `exec` with runc's flags (issue #14 item 4): `--env` overriding the config, `--cap`,
//! `--additional-gids`, `--no-new-privs`; a paused container refused unless
//! `--ignore-paused` (checked against runc). Needs root and busybox (and runc).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{lock, require_root_and_busybox, Bundle, BIN};

/// The hex value of a `/proc/self/status` field in `out` (`CapEff: 00000000a80425fb`).
fn status_hex(out: &str, field: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {out}"));
    u64::from_str_radix(line.split_whitespace().last().unwrap(), 16).unwrap()
}

#[test]
fn root_exec_flags_as_runc() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(&["sleep", "1000"], |c| {
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_CONFIG=1"]);
    });
    let id = "vk-exec-flags";
    b.create(id);
    b.ok(&["start", id]);
    // --env overrides a variable of the config, and adds new ones.
    let out = b.ok(&[
        "exec",
        "--env",
        "FROM_CONFIG=2",
        "--env",
        "NEW=3",
        id,
        "sh",
        "-c",
        "echo $FROM_CONFIG $NEW; env | grep -c FROM_CONFIG",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["2 3", "1"], "{out}");
    // --cap adds to the effective set (CAP_SYS_ADMIN is bit 21; not in runc's default).
    let sys_admin = 1u64 << 21;
    let plain = b.ok(&[
        "exec",
        id,
        "grep",
        "-E",
        "CapEff|NoNewPrivs|Groups",
        "/proc/self/status",
    ]);
    assert_eq!(status_hex(&plain, "CapEff:") & sys_admin, 0, "{plain}");
    let more = b.ok(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        "--additional-gids",
        "1234",
        "-g",
        "99",
        "--no-new-privs",
        id,
        "grep",
        "-E",
        "CapEff|NoNewPrivs|Groups",
        "/proc/self/status",
    ]);
    assert_ne!(status_hex(&more, "CapEff:") & sys_admin, 0, "{more}");
    assert!(
        more.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{more}"
    );
    let groups = more.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(groups.contains("1234") && groups.contains("99"), "{more}");
    assert!(!b
        .rt(&["exec", "--cap", "CAP_NO_SUCH", id, "true"])
        .status
        .success());
    // A paused container refuses exec, saying why.
    b.ok(&["pause", id]);
    let o = b.rt(&["exec", id, "true"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("paused"),
        "{o:?}"
    );
    b.ok(&["resume", id]);
    b.ok(&["kill", "--all", id, "KILL"]);
    b.wait_status(id, "stopped", 5);
    b.ok(&["delete", id]);
}

#[test]
fn root_exec_into_a_sub_cgroup() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(&["sleep", "1000"], |_| {});
    let id = "vk-exec-subcg";
    b.create(id);
    b.ok(&["start", id]);
    // Not there yet: a clear error.
    let o = b.rt(&["exec", "--cgroup", "sub", id, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("does not exist"),
        "{err}"
    );
    // Make it in every hierarchy the container has, then exec into it.
    let mut made = 0;
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = entry.path().join("virtkit").join(id);
        if dir.is_dir() {
            std::fs::create_dir(dir.join("sub")).unwrap();
            // A new v1 cpuset starts empty: give it the parent's CPUs and nodes.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(dir.join(f)) {
                    std::fs::write(dir.join("sub").join(f), v.trim()).unwrap();
                }
            }
            made += 1;
        }
    }
    assert!(made > 0, "the container has no cgroup directories");
    let out = b.ok(&["exec", "--cgroup", "sub", id, "cat", "/proc/self/cgroup"]);
    let pids_line = out
        .lines()
        .find(|l| l.contains(":pids:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(pids_line.ends_with("/sub"), "not in the sub-cgroup: {out}");
    for bad in ["cpu:sub", "../other"] {
        assert!(
            !b.rt(&["exec", "--cgroup", bad, id, "true"])
                .status
                .success(),
            "{bad}"
        );
    }
    // delete removes the sub-cgroup with the container's.
    b.ok(&["delete", "--force", id]);
    assert!(!common::cgroup_dir("pids", id).exists());
}

/// The pids in container `id`'s cgroup, as runtime `bin` lists them.
fn pids(b: &Bundle, bin: &str, state: &Path, id: &str) -> Vec<i64> {
    let o = b.rt_with(bin, state, &["ps", "--format", "json", id]);
    assert!(o.status.success(), "{bin} ps: {o:?}");
    let mut v: Vec<i64> = serde_json::from_slice(&o.stdout).unwrap();
    v.sort_unstable();
    v
}

/// `exec` into a paused container, with container-runner and with runc on the same
/// bundle: refused with runc's message and nothing left behind; with `--ignore-paused`
/// accepted, the process frozen until `resume` (exec has not returned, the process has
/// not run), then it runs and exec returns its status.
#[test]
fn root_exec_ignore_paused_as_runc() {
    let _g = lock();
    require_root_and_busybox();
    // A writable root: the processes leave marks in the bundle's rootfs/tmp.
    let b = Bundle::new(&["sleep", "1000"], |c| c["root"]["readonly"] = false.into());
    let runc_state = b.path().join("runc-state");
    for (bin, state, id) in [
        (BIN, b.state_root.clone(), "vk-paused"),
        ("runc", runc_state.clone(), "vk-paused-runc"),
    ] {
        let rt = |args: &[&str]| b.rt_with(bin, &state, args);
        let ok = |args: &[&str]| {
            let o = rt(args);
            assert!(o.status.success(), "{bin} {args:?}: {o:?}");
        };
        let bundle = b.path().to_str().unwrap();
        ok(&["create", "--bundle", bundle, id]);
        ok(&["start", id]);
        ok(&["pause", id]);
        let before = pids(&b, bin, &state, id);
        let o = rt(&["exec", id, "touch", "/tmp/refused"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && err.contains(
                    "cannot exec in a paused container (use --ignore-paused to override)"
                ),
            "{bin}: {o:?}"
        );
        assert_eq!(
            pids(&b, bin, &state, id),
            before,
            "{bin}: a process was left"
        );
        assert!(!b.path().join("rootfs/tmp/refused").exists(), "{bin}");

        let mark = b.path().join("rootfs/tmp/ran");
        let (out, errf) = (b.path().join(".exec.out"), b.path().join(".exec.err"));
        let args = [
            "exec",
            "--ignore-paused",
            id,
            "sh",
            "-c",
            "touch /tmp/ran && echo ran; exit 3",
        ];
        let mut child = b.command(bin, &state, &args, &out, &errf).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{bin}: exec returned while paused"
        );
        assert!(
            !mark.exists(),
            "{bin}: the process ran while the container was paused"
        );
        assert_eq!(
            b.rt_with(bin, &state, &["state", id]).status.code(),
            Some(0)
        );
        ok(&["resume", id]);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{bin}: exec still waits"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            status.code(),
            Some(3),
            "{bin}: {}",
            std::fs::read_to_string(&errf).unwrap()
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n", "{bin}");
        assert!(mark.exists(), "{bin}");
        std::fs::remove_file(&mark).unwrap();
        ok(&["delete", "--force", id]);
    }
}
