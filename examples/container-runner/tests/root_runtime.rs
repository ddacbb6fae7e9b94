//! container-runner end to end, as root, on a busybox rootfs (package busybox-static).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn root_lifecycle_create_start_kill_delete() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(&["sleep", "1000"], |c| {
        c["annotations"] = serde_json::json!({"org.test": "yes"});
    });
    let id = "vk-life";
    let pidfile = b.path().join("pid");
    let bs = b.path().to_str().unwrap().to_string();
    b.ok(&[
        "create",
        "--bundle",
        &bs,
        "--pid-file",
        pidfile.to_str().unwrap(),
        id,
    ]);
    let st = b.state(id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id);
    assert_eq!(st["bundle"], bs);
    assert_eq!(st["annotations"]["org.test"], "yes");
    assert!(st["ociVersion"].as_str().unwrap().starts_with("1."));
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    assert_eq!(st["pid"], pid);
    // Init is blocked before exec: still our binary, not sleep.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_ne!(comm.trim(), "sleep");
    assert!(cgroup_dir("memory", id).exists());
    // CVE-2019-5736: hold init's /proc/<pid>/exe (the runtime binary) to reopen it for
    // writing once the process is gone, as a container process would.
    let exe = std::ffi::CString::new(format!("/proc/{pid}/exe")).unwrap();
    // SAFETY: valid path; the fd is closed at the end of the test.
    let exe_fd = unsafe { libc::open(exe.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    assert!(exe_fd >= 0);

    b.ok(&["start", id]);
    b.wait_status(id, "running", 5);
    let t0 = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        != "sleep"
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "init never exec'd sleep"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Start twice is an error; delete of a running container without --force too.
    assert!(!b.rt(&["start", id]).status.success());
    assert!(!b.rt(&["delete", id]).status.success());
    let list = b.ok(&["list", "--format", "json"]);
    let l: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(l[0]["id"], id);
    assert_eq!(b.ok(&["list", "-q"]).trim(), id);

    b.ok(&["kill", id, "KILL"]);
    b.wait_status(id, "stopped", 5);
    assert_eq!(b.state(id)["pid"], 0);
    let reopen = std::ffi::CString::new(format!("/proc/self/fd/{exe_fd}")).unwrap();
    // SAFETY: valid path.
    let w = unsafe { libc::open(reopen.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    let err = std::io::Error::last_os_error();
    assert!(w < 0, "the runtime binary could be opened for writing");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(exe_fd) };
    b.ok(&["delete", id]);
    assert!(!b.state_root.join(id).exists());
    assert!(!cgroup_dir("memory", id).exists());
    assert!(!cgroup_dir("pids", id).exists());
    let o = b.rt(&["state", id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn root_run_sees_namespaces_masks_and_readonly_paths() {
    let _g = lock();
    require_root_and_busybox();
    let script = "echo host=$(hostname); echo pid=$$; echo net=$(ls /sys/class/net); \
        echo timer_list=$(wc -c < /proc/timer_list); echo firmware=$(ls /sys/firmware | wc -l); echo null=$(ls -l /dev/null | cut -c1-10); \
        if echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null; then echo sys=rw; else echo sys=ro; fi; \
        echo fds=$(ls /proc/self/fd | wc -l); echo cwd=$(pwd); \
        echo caps=$(grep CapEff /proc/self/status); \
        echo pidsmax=$(cat /sys/fs/cgroup/pids/pids.max); echo cgns=$(grep :pids: /proc/self/cgroup); \
        if echo 5 > /sys/fs/cgroup/pids/pids.max 2>/dev/null; then echo cg=rw; else echo cg=ro; fi";
    let b = Bundle::new(&["sh", "-c", script], |c| {
        c["hostname"] = "vk-host".into();
        c["process"]["cwd"] = "/tmp".into();
        c["linux"]["resources"]["pids"] = serde_json::json!({"limit": 99});
    });
    let bs = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bs, "vk-ns"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let has = |l: &str| out.lines().any(|x| x.trim() == l);
    assert!(has("host=vk-host"), "{out}");
    assert!(has("pid=1"), "{out}");
    assert!(has("net=lo"), "{out}");
    // Masked (default list from `spec`): a file reads empty, a directory lists nothing.
    assert!(Path::new("/proc/timer_list").exists() && Path::new("/sys/firmware").exists());
    assert!(has("timer_list=0"), "{out}");
    assert!(has("firmware=0"), "{out}");
    assert!(has("null=crw-rw-rw-"), "{out}");
    assert!(has("sys=ro"), "{out}");
    assert!(has("cwd=/tmp"), "{out}");
    // /sys/fs/cgroup holds the container's own cgroups (read-only), and the cgroup
    // namespace is rooted at them.
    assert!(has("pidsmax=99"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("cgns=") && l.ends_with(":pids:/")),
        "{out}"
    );
    assert!(has("cg=ro"), "{out}");
    // stdin, stdout, stderr and the fd ls itself opened: nothing leaked from the runtime.
    assert!(has("fds=4"), "{out}");
    // runc's default set (from `spec`): no CAP_SYS_ADMIN (bit 21).
    let caps = out.lines().find(|l| l.starts_with("caps=")).unwrap();
    let mask = u64::from_str_radix(caps.split_whitespace().last().unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 21), 0, "{caps}");
    assert_ne!(mask, 0, "{caps}");
    // `run` deletes the container afterwards.
    assert!(!b.state_root.join("vk-ns").exists());
}

#[test]
fn root_exit_code_and_exec_into_running_container() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(&["sh", "-c", "exit 7"], |_| {});
    let bs = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bs, "vk-exit"]);
    assert_eq!(o.status.code(), Some(7));

    let b = Bundle::new(&["sleep", "1000"], |c| {
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_CONFIG=1"]);
    });
    let id = "vk-exec";
    b.create(id);
    b.ok(&["start", id]);
    let out = b.ok(&[
        "exec",
        "--env",
        "EXTRA=2",
        id,
        "sh",
        "-c",
        "echo $$ $FROM_CONFIG $EXTRA; cat /proc/1/comm",
    ]);
    let mut lines = out.lines();
    let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_ne!(first[0], "1", "exec'd process must not be pid 1");
    assert_eq!(&first[1..], ["1", "2"]);
    assert_eq!(lines.next(), Some("sleep"));
    // Exit codes come back, and failures are reported.
    assert_eq!(
        b.rt(&["exec", id, "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    let o = b.rt(&["exec", id, "/no/such/binary"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/binary"));
    // --process with a JSON file, detached with a pid file.
    let pf = b.path().join("exec.pid");
    let proc_json = b.path().join("process.json");
    std::fs::write(
        &proc_json,
        r#"{"args":["sleep","500"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#,
    )
    .unwrap();
    b.ok(&[
        "exec",
        "--process",
        proc_json.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pf.to_str().unwrap(),
        id,
    ]);
    let xpid: i32 = std::fs::read_to_string(&pf).unwrap().parse().unwrap();
    let ps: Vec<i32> = serde_json::from_str(&b.ok(&["ps", "--format", "json", id])).unwrap();
    assert!(ps.contains(&xpid), "{ps:?} lacks {xpid}");
    assert_eq!(ps.len(), 2);
    // kill --all reaches the exec'd process too.
    b.ok(&["kill", "--all", id, "KILL"]);
    b.wait_status(id, "stopped", 5);
    b.ok(&["delete", id]);
}

/// Receives one fd sent with SCM_RIGHTS.
fn recv_fd(sock: i32) -> OwnedFd {
    let mut buf = [0u8; 256];
    let mut cbuf = [0u8; 64];
    // SAFETY: msghdr built from valid local buffers; the received fd becomes ours.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len();
        assert!(libc::recvmsg(sock, &mut msg, 0) >= 0);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null(), "no fd received");
        assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn root_tty_through_console_socket() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(
        &["sh", "-c", "tty; echo size=$(stty size); echo done"],
        |c| {
            c["process"]["terminal"] = true.into();
            c["process"]["consoleSize"] = serde_json::json!({"height": 30, "width": 100});
        },
    );
    let sock_path = b.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let bs = b.path().to_str().unwrap().to_string();
    let sp = sock_path.to_str().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let (conn, _) = listener.accept().unwrap();
        recv_fd(conn.as_raw_fd())
    });
    b.ok(&["create", "--bundle", &bs, "--console-socket", &sp, "vk-tty"]);
    let master = handle.join().unwrap();
    b.ok(&["start", "vk-tty"]);
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains("done") && t0.elapsed() < Duration::from_secs(5) {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break, // EIO once the slave side closes
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let s = String::from_utf8_lossy(&out);
    assert!(s.contains("/dev/pts/0"), "{s}");
    assert!(s.contains("size=30 100"), "{s}");
    b.wait_status("vk-tty", "stopped", 5);
    b.ok(&["delete", "vk-tty"]);
}

#[test]
fn root_limits_memory_pids_cpu_enforced() {
    let _g = lock();
    require_root_and_busybox();
    // Memory: a shell that builds a 64 MiB string under a 16 MiB limit is OOM-killed.
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
        ],
        |c| c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 16777216}),
    );
    let bs = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bs, "vk-mem"]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("survived"),
        "{o:?}"
    );
    assert_eq!(o.status.code(), Some(137), "{o:?}");

    // pids: 20 background sleeps under pids.max 8.
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "sleep 1000 & sh -c 'for i in $(seq 1 20); do sleep 1000 & done; wait'; wait",
        ],
        |c| c["linux"]["resources"]["pids"] = serde_json::json!({"limit": 8}),
    );
    b.create("vk-pids");
    b.ok(&["start", "vk-pids"]);
    // Wait until the fork loop has hit the limit (the inner shell gives up on the first
    // failed fork), then the count must stay at or under pids.max.
    let t0 = Instant::now();
    let mut ps: Vec<i32> = Vec::new();
    while t0.elapsed() < Duration::from_secs(5) {
        ps = serde_json::from_str(&b.ok(&["ps", "--format", "json", "vk-pids"])).unwrap();
        if ps.len() >= 6 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let ps2: Vec<i32> =
        serde_json::from_str(&b.ok(&["ps", "--format", "json", "vk-pids"])).unwrap();
    assert!(ps.len() >= 6, "the fork loop never got going: {ps:?}");
    assert!(
        ps2.len() <= 8,
        "{} tasks under pids.max 8: {ps2:?}",
        ps2.len()
    );
    assert_eq!(
        std::fs::read_to_string(cgroup_dir("pids", "vk-pids").join("pids.max"))
            .unwrap()
            .trim(),
        "8"
    );
    b.ok(&["delete", "--force", "vk-pids"]);

    // cpu: a spinner under 20% quota uses about 0.2 s of CPU per second.
    let b = Bundle::new(&["sh", "-c", "while :; do :; done"], |c| {
        c["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 20000, "period": 100000})
    });
    b.create("vk-cpu");
    let usage = cgroup_dir("cpuacct", "vk-cpu").join("cpuacct.usage");
    b.ok(&["start", "vk-cpu"]);
    let u0: u64 = std::fs::read_to_string(&usage)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let u1: u64 = std::fs::read_to_string(&usage)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let share = (u1 - u0) as f64 / t0.elapsed().as_nanos() as f64;
    assert!(share < 0.3 && share > 0.05, "cpu share {share}");
    // events --stats reports the cgroup's figures as runc does.
    let ev: serde_json::Value =
        serde_json::from_str(&b.ok(&["events", "--stats", "vk-cpu"])).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], "vk-cpu");
    assert!(
        ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    // update --resources raises the quota on the fly.
    let r = b.path().join("res.json");
    std::fs::write(&r, r#"{"cpu":{"quota":60000,"period":100000}}"#).unwrap();
    b.ok(&["update", "--resources", r.to_str().unwrap(), "vk-cpu"]);
    let q = std::fs::read_to_string(cgroup_dir("cpu", "vk-cpu").join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(q.trim(), "60000");
    // pause / resume through the freezer.
    b.ok(&["pause", "vk-cpu"]);
    assert_eq!(b.status("vk-cpu"), "paused");
    let p0: u64 = std::fs::read_to_string(&usage)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let p1: u64 = std::fs::read_to_string(&usage)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(p1 - p0 < 5_000_000, "frozen container used {} ns", p1 - p0);
    b.ok(&["resume", "vk-cpu"]);
    assert_eq!(b.status("vk-cpu"), "running");
    b.ok(&["delete", "--force", "vk-cpu"]);
    assert!(!cgroup_dir("cpu", "vk-cpu").exists());
}

#[test]
fn root_crash_during_create_then_delete_force_leaves_nothing() {
    let _g = lock();
    require_root_and_busybox();
    // A createRuntime hook that sleeps holds create in the middle: init exists, in its
    // namespaces, with the rootfs mounts prepared.
    let b = Bundle::new(&["true"], |c| {
        c["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/busybox", "args": ["busybox", "sleep", "2"]}]});
    });
    let bs = b.path().to_str().unwrap().to_string();
    let rootfs = std::fs::canonicalize(b.path().join("rootfs")).unwrap();
    // `run` too: it makes its state directory and cgroup after the clone.
    let points = [0u64, 3, 10, 30, 300];
    let cases = ["create", "run"]
        .iter()
        .flat_map(|cmd| points.iter().map(move |d| (*cmd, *d)));
    for (n, (cmd, delay_ms)) in cases.enumerate() {
        let id = format!("vk-crash{n}");
        let mut child = Command::new(BIN)
            .arg("--root")
            .arg(&b.state_root)
            .args([cmd, "--bundle", &bs, &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let init_pid = std::fs::read_to_string(b.state_root.join(&id).join("state.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["pid"].as_i64())
            .unwrap_or(0) as i32;
        if b.state_root.join(&id).exists() {
            b.ok(&["delete", "--force", &id]);
        }
        assert!(!b.state_root.join(&id).exists(), "{id}: state dir left");
        for ctl in ["memory", "pids", "cpu", "freezer"] {
            assert!(!cgroup_dir(ctl, &id).exists(), "{id}: {ctl} cgroup left");
        }
        assert!(
            !mounted_under(&rootfs),
            "{id}: mounts left under the rootfs"
        );
        if init_pid > 0 {
            let t0 = Instant::now();
            while Path::new(&format!("/proc/{init_pid}")).exists()
                && std::fs::read_to_string(format!("/proc/{init_pid}/cmdline"))
                    .is_ok_and(|c| c.contains("container-runner"))
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(3),
                    "{id}: init {init_pid} survived"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn root_json_log_errors_and_version() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(&["true"], |_| {});
    let log = b.path().join("log.json");
    let o = b.rt(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "nope",
    ]);
    assert!(!o.status.success());
    let line = std::fs::read_to_string(&log).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("nope"));
    assert!(v["time"].is_string());
    let out = b.ok(&["--version"]);
    assert!(out.starts_with("container-runner version "), "{out}");
    assert!(out.contains("\nspec: 1."), "{out}");
    let o = b.rt(&["--systemd-cgroup", "list"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("systemd"));
    let f: serde_json::Value = serde_json::from_str(&b.ok(&["features"])).unwrap();
    assert!(f["linux"]["namespaces"].as_array().unwrap().len() >= 7);
}

#[test]
fn root_seccomp_profile_is_enforced() {
    let _g = lock();
    require_root_and_busybox();
    // Deny mkdir/mkdirat with EPERM (1) and chmod's family with EACCES, allow the rest.
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "mkdir /dev/shm/x 2>&1; echo mkdir=$?; touch /dev/shm/y; echo touch=$?",
        ],
        |c| {
            c["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            })
        },
    );
    let bs = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bs, "vk-sec"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("mkdir=1"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("touch=0"), "{out}");
}

#[test]
fn root_all_six_hooks_run_with_state_on_stdin() {
    let _g = lock();
    require_root_and_busybox();
    let host = tempfile::tempdir().unwrap();
    let h = host.path().to_str().unwrap().to_string();
    let hook = |name: &str, dir: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {dir}/{name}.json")]});
    let b = Bundle::new(&["sh", "-c", "ls /hostdir > /hostdir/seen"], |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/hostdir", "type": "bind", "source": h, "options": ["rbind", "rw"]
        }));
        c["hooks"] = serde_json::json!({
            "prestart": [hook("prestart", &h)],
            "createRuntime": [hook("createRuntime", &h)],
            "createContainer": [hook("createContainer", &h)],
            // Runs inside the container: the bind mount is at /hostdir there.
            "startContainer": [hook("startContainer", "/hostdir")],
            "poststart": [hook("poststart", &h)],
            "poststop": [hook("poststop", &h)],
        });
    });
    let bs = b.path().to_str().unwrap().to_string();
    b.ok(&["run", "--bundle", &bs, "vk-hooks"]);
    for name in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        let p = host.path().join(format!("{name}.json"));
        let text =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{name} hook did not run: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        assert_eq!(v["id"], "vk-hooks", "{name}");
        assert!(v["pid"].as_i64().unwrap() > 0, "{name}: {v}");
    }
    let seen = std::fs::read_to_string(host.path().join("seen")).unwrap();
    assert!(
        seen.contains("startContainer.json"),
        "startContainer ran before the process: {seen}"
    );
    let stop: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(host.path().join("poststop.json")).unwrap())
            .unwrap();
    assert_eq!(stop["status"], "stopped");
}

#[test]
fn root_user_namespace_with_id_maps() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox; sleep 1000",
        ],
        |c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "user"}));
            c["linux"]["uidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
            c["linux"]["gidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        },
    );
    let id = "vk-userns";
    b.create(id);
    b.ok(&["start", id]);
    let pid = b.state(id)["pid"].as_i64().unwrap();
    // Seen from the host, the container's root is uid 200000.
    let t0 = Instant::now();
    loop {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = st
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        if uid.split_whitespace().nth(1) == Some("200000") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{uid}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = b.ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox",
    ]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"],
        "{out}"
    );
    // Host root's files are unmapped inside: the overflow uid.
    assert_eq!(lines[2], "65534", "{out}");
    b.ok(&["delete", "--force", id]);
}

#[test]
fn root_preserve_fds_passes_only_what_was_asked() {
    let _g = lock();
    require_root_and_busybox();
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "cat <&3 2>&1; cat <&4 2>&1; echo; ls /proc/self/fd | wc -l",
        ],
        |_| {},
    );
    let bs = b.path().to_str().unwrap().to_string();
    let f3 = b.path().join("fd3.txt");
    let f4 = b.path().join("fd4.txt");
    std::fs::write(&f3, "from-fd-3").unwrap();
    std::fs::write(&f4, "from-fd-4").unwrap();
    let run = |preserve: &str| {
        let script = format!(
            "exec 3<{} 4<{}; exec {BIN} --root {} run --preserve-fds {preserve} --bundle {bs} vk-fds",
            f3.display(),
            f4.display(),
            b.state_root.display()
        );
        let o = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // fd 3 passed, fd 4 not: it was open in the runtime but close-on-exec.
    let out = run("1");
    assert!(out.contains("from-fd-3"), "{out}");
    assert!(!out.contains("from-fd-4"), "{out}");
    let out = run("2");
    assert!(
        out.contains("from-fd-3") && out.contains("from-fd-4"),
        "{out}"
    );
    let out = run("0");
    assert!(
        !out.contains("from-fd-3") && !out.contains("from-fd-4"),
        "{out}"
    );
}

#[test]
fn root_run_execs_through_the_dmz_never_the_runtime_binary() {
    let _g = lock();
    require_root_and_busybox();
    // CVE-2019-5736 through `run`: the entry point is /proc/self/exe, resolved in the
    // process that execs it. `run` (new PID namespace, no hooks, no seccomp) execs the
    // container process through the sealed exec DMZ, so /proc/self/exe there is the
    // DMZ: the runtime binary never runs as the container process (it would print its
    // version), and the DMZ, given no program, reports the failed exec with 127.
    let b = Bundle::new(&["/proc/self/exe", "--version"], |_| {});
    let bs = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bs, "vk-dmz"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!out.contains("container-runner version"), "{out}");
    assert_eq!(o.status.code(), Some(127), "{out}\n{err}");
    assert!(
        err.contains("execve of the container process failed"),
        "{err}"
    );
    assert!(!b.state_root.join("vk-dmz").exists());
    // A plain process runs through the DMZ with its argv and environment.
    let b = Bundle::new(&["sh", "-c", "echo $0 $1 $HOME", "a", "b"], |c| {
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "HOME=/home/x"]);
    });
    let bs = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bs, "vk-dmz2"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "a b /home/x\n");
}
