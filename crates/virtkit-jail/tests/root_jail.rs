//! Root tier: real jails on this host. `harness = false`: `Jail::run` must be called by a
//! process with one thread, so the cases run one after the other on the main thread (and,
//! for the kill -9 case, in a child process of this same binary, `VIRTKIT_JAIL_CASE`).
//! Arguments: substrings select cases; `--list` lists. Not root: each case fails saying so.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use virtkit_jail::{Jail, JailConfig, JailError};

const NOBODY: u32 = 65534;
const CASE_ENV: &str = "VIRTKIT_JAIL_CASE";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("virtkit-jail-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A host file handed to the jail.
fn host_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let hier = virtkit_cgroups::Hierarchies::detect().unwrap();
    let cg = virtkit_cgroups::open(&hier, &format!("virtkit-jail/{id}")).unwrap();
    cg.dirs().into_iter().filter(|d| d.exists()).collect()
}

/// Runs `checks` inside a jail as a closure returning the failures it found.
fn inside(config: JailConfig, checks: impl FnOnce(&virtkit_jail::Inside) -> Vec<String>) -> i32 {
    Jail::new(config)
        .unwrap()
        .run(|i| {
            let failed = checks(i);
            for f in &failed {
                eprintln!("inside the jail: {f}");
            }
            i32::from(!failed.is_empty())
        })
        .unwrap()
}

fn sees_only_its_files_processes_and_interfaces() {
    let dir = scratch("sees");
    let kernel = host_file(&dir, "vmlinux", "kernel bytes");
    let disk = host_file(&dir, "disk.img", "disk bytes");
    let root = dir.join("root");
    let mut c = JailConfig::new("vk-test-sees", &root, NOBODY, NOBODY)
        .file(&kernel, true)
        .file(&disk, false)
        .file("/dev/kvm", false)
        .file("/dev/null", false);
    c.new_netns = true;
    let before = host_mounts();
    let (k2, d2) = (kernel.clone(), disk.clone());
    let status = inside(c, move |_| {
        let mut bad = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                bad.push(what);
            }
        };
        check(
            !Path::new("/etc/passwd").exists(),
            "/etc/passwd is visible".into(),
        );
        check(!Path::new("/usr").exists(), "/usr is visible".into());
        check(
            std::fs::read_to_string(&k2).ok().as_deref() == Some("kernel bytes"),
            "kernel unreadable".into(),
        );
        let w = std::fs::OpenOptions::new().write(true).open(&k2);
        check(
            w.err().and_then(|e| e.raw_os_error()) == Some(libc::EROFS),
            "the read-only kernel is writable".into(),
        );
        check(
            std::fs::write(&d2, "written inside").is_ok(),
            "the disk is not writable".into(),
        );
        check(
            std::fs::File::open("/dev/kvm").is_ok(),
            "/dev/kvm cannot be opened".into(),
        );
        let pids: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        check(pids == ["1"], format!("processes visible: {pids:?}"));
        let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        check(ifaces == ["lo"], format!("interfaces visible: {ifaces:?}"));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        check(host.trim() == "vk-test-sees", format!("hostname {host:?}"));
        let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        check(
            cg.contains("virtkit-jail/vk-test-sees"),
            format!("cgroup: {cg}"),
        );
        bad
    });
    assert_eq!(status, 0, "checks inside the jail failed (see above)");
    assert_eq!(std::fs::read_to_string(&disk).unwrap(), "written inside");
    assert!(!root.exists(), "the jail root it created is left");
    assert!(cgroup_dirs("vk-test-sees").is_empty(), "cgroup left");
    assert_eq!(host_mounts(), before, "mounts leaked into the host");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn drops_to_the_uid_with_no_capabilities() {
    let dir = scratch("drop");
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap(); // a given, empty root stays (emptied) afterwards
    let c = JailConfig::new("vk-test-drop", &root, NOBODY, NOBODY).file("/dev/kvm", false);
    let status = inside(c, |i| {
        let mut bad = Vec::new();
        // Opened as root before the drop, still usable after it.
        let kvm = std::fs::File::open("/dev/kvm");
        if let Err(e) = i.drop_privileges() {
            return vec![format!("drop_privileges: {e}")];
        }
        // SAFETY: getters without arguments.
        let ids = unsafe {
            (
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid(),
            )
        };
        if ids != (NOBODY, NOBODY, NOBODY, NOBODY) {
            bad.push(format!("ids {ids:?}"));
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let line = status.lines().find(|l| l.starts_with(k)).unwrap_or("");
            if !line.ends_with("0000000000000000") {
                bad.push(line.to_string());
            }
        }
        if !status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1'))
        {
            bad.push("no_new_privs not set".into());
        }
        if kvm.is_err() {
            bad.push("/dev/kvm was not opened before the drop".into());
        }
        // Now unprivileged: /dev/kvm's node is root-only (0660 root:kvm here).
        if std::fs::create_dir("/newdir").is_ok() {
            bad.push("could write into the root as nobody".into());
        }
        bad
    });
    assert_eq!(status, 0, "checks inside the jail failed (see above)");
    assert!(root.is_dir(), "the given root was removed");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "the given root is not empty"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn memory_is_capped_by_the_cgroup() {
    let dir = scratch("mem");
    let mut c = JailConfig::new("vk-test-mem", dir.join("root"), NOBODY, NOBODY);
    c.limits.memory_bytes = Some(64 << 20);
    c.limits.pids = Some(16);
    let status = Jail::new(c)
        .unwrap()
        .run(|_| {
            // Touch 256 MiB, four times the limit: the OOM killer ends the process.
            let mut v: Vec<Vec<u8>> = Vec::new();
            for _ in 0..256 {
                v.push(vec![1u8; 1 << 20]);
            }
            std::hint::black_box(&v);
            0
        })
        .unwrap();
    assert_eq!(
        status,
        128 + libc::SIGKILL,
        "a jail over its memory limit was not killed"
    );
    assert!(cgroup_dirs("vk-test-mem").is_empty(), "cgroup left");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bad_input_fails_before_anything_starts() {
    let dir = scratch("bad");
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("stray"), "x").unwrap();
    let e = Jail::new(JailConfig::new("vk-test-bad", &root, NOBODY, NOBODY)).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    let e = Jail::new(JailConfig::new(
        "vk-test-bad",
        dir.join("r2"),
        3_999_999_999,
        NOBODY,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(cgroup_dirs("vk-test-bad").is_empty());
    // A failure inside (a file that vanished before the bind) comes back as an error.
    let f = host_file(&dir, "gone", "x");
    let j =
        Jail::new(JailConfig::new("vk-test-bad", dir.join("r3"), NOBODY, NOBODY).file(&f, true))
            .unwrap();
    std::fs::remove_file(&f).unwrap();
    match j.run(|_| 0) {
        Err(JailError::Inside(msg)) => assert!(msg.contains("mount"), "{msg}"),
        other => panic!("expected a set-up error, got {other:?}"),
    }
    assert!(
        !dir.join("r3").exists(),
        "the root of a failed jail is left"
    );
    assert!(
        cgroup_dirs("vk-test-bad").is_empty(),
        "the cgroup of a failed jail is left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The child process of `kill_9_leaves_nothing`: a jail that sleeps.
fn sleeper(root: &str) -> ! {
    let c = JailConfig::new("vk-test-kill", root, NOBODY, NOBODY);
    let status = Jail::new(c).unwrap().run(|_| {
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    std::process::exit(status.unwrap_or(99));
}

fn kill_9_leaves_nothing() {
    let dir = scratch("kill");
    let root = dir.join("root");
    let before = host_mounts();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CASE_ENV, "sleeper")
        .arg(&root)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cgroup_dirs("vk-test-kill").is_empty() || !root.join("proc").exists() {
        assert!(Instant::now() < deadline, "the jail did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL to the supervisor
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cgroup_dirs("vk-test-kill").is_empty() || root.exists() {
        assert!(
            Instant::now() < deadline,
            "after kill -9: cgroup {:?}, root exists {}",
            cgroup_dirs("vk-test-kill"),
            root.exists()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_mounts(), before, "mounts leaked into the host");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    if let Ok(case) = std::env::var(CASE_ENV) {
        if case == "sleeper" {
            sleeper(&std::env::args().nth(1).unwrap());
        }
        panic!("unknown case {case}");
    }
    let cases: [(&str, fn()); 5] = [
        (
            "root_jail_sees_only_its_files_processes_and_interfaces",
            sees_only_its_files_processes_and_interfaces,
        ),
        (
            "root_jail_drops_to_the_uid_with_no_capabilities",
            drops_to_the_uid_with_no_capabilities,
        ),
        (
            "root_jail_memory_is_capped_by_the_cgroup",
            memory_is_capped_by_the_cgroup,
        ),
        (
            "root_jail_bad_input_fails_before_anything_starts",
            bad_input_fails_before_anything_starts,
        ),
        ("root_jail_kill_9_leaves_nothing", kill_9_leaves_nothing),
    ];
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in cases {
            println!("{name}: test");
        }
        return;
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases {
        if !args.is_empty() && !args.iter().any(|a| name.contains(a.as_str())) {
            continue;
        }
        ran += 1;
        // SAFETY: geteuid has no arguments.
        let outcome = if unsafe { libc::geteuid() } != 0 {
            Err("needs root (run the root tier as root)".to_string())
        } else {
            std::panic::catch_unwind(case).map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            })
        };
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(why) => {
                println!("test {name} ... FAILED: {why}");
                failed.push(name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
