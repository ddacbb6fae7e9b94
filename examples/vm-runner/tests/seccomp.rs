//! vm-runner's seccomp filters (on by default): each thread kind, made to call a system
//! call outside its list (the `VIRTKIT_SECCOMP_SELFTEST` hook), ends vm-runner with status
//! 159 and a line naming the call and the thread; `off` and `log` let it through. Tests
//! that start a VM are `kvm_` and need /dev/kvm; the other tests of this crate run with the
//! filters on too, so a call missing from a list fails them.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// ACPI power-off through the sleep control port, as in cli.rs.
const POWEROFF: [u8; 8] = [0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4];

fn tiny_kernel() -> tempfile::NamedTempFile {
    let mut t = tempfile::NamedTempFile::new().unwrap();
    t.write_all(&virtkit_boot::testing::tiny_elf(&POWEROFF))
        .unwrap();
    t
}

fn runner(args: &[&str], selftest: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vm-runner"));
    c.args(args).stdin(Stdio::null());
    if let Some(kind) = selftest {
        c.env("VIRTKIT_SECCOMP_SELFTEST", kind);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_killed(o: &Output, thread: &str, kind: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(159), "{err}");
    let want = format!(
        "virtkit-vmm: seccomp: thread {thread} ({kind} filter) made a forbidden system call: getppid (110); the VMM exits"
    );
    assert!(err.contains(&want), "expected {want:?} in: {err}");
}

#[test]
fn kvm_a_vcpu_thread_making_a_forbidden_call_ends_the_vmm_naming_it() {
    let k = tiny_kernel();
    let kp = k.path().to_str().unwrap();
    let o = runner(&["--kernel", kp, "--serial", "none"], Some("vcpu"));
    assert_killed(&o, "vcpu0", "vcpu");
    let o = runner(
        &["--kernel", kp, "--serial", "none", "--cpus", "2"],
        Some("vcpu"),
    );
    assert!(
        stderr(&o).contains("thread vcpu1 (vcpu filter)")
            || stderr(&o).contains("thread vcpu0 (vcpu filter)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(159));
}

#[test]
fn kvm_the_event_loop_making_a_forbidden_call_ends_the_vmm_naming_it() {
    let k = tiny_kernel();
    let o = runner(
        &["--kernel", k.path().to_str().unwrap(), "--serial", "none"],
        Some("vmm"),
    );
    // Without --api-socket the loop runs on the main thread.
    assert_killed(&o, "main", "vmm");
}

#[test]
fn an_api_thread_making_a_forbidden_call_ends_the_vmm_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let o = runner(&["--api-socket", sock.to_str().unwrap()], Some("api"));
    assert_killed(&o, "main", "api");
}

#[test]
fn kvm_with_the_api_each_thread_has_its_own_filter() {
    // The API boots the VM from the command line, then serves; its VMM thread is "vmm".
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let k = tiny_kernel();
    let args = [
        "--api-socket",
        sock.to_str().unwrap(),
        "--kernel",
        k.path().to_str().unwrap(),
        "--serial",
        "none",
    ];
    assert_killed(&runner(&args, Some("vmm")), "vmm", "vmm");
    assert_killed(&runner(&args, Some("vcpu")), "vcpu0", "vcpu");
    // Without the hook the same VM powers off and vm-runner ends cleanly.
    let o = runner(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn kvm_off_and_log_let_the_call_through() {
    let k = tiny_kernel();
    let kp = k.path().to_str().unwrap();
    for mode in ["off", "log"] {
        for kind in ["vcpu", "vmm"] {
            let o = runner(
                &["--kernel", kp, "--serial", "none", "--seccomp", mode],
                Some(kind),
            );
            assert_eq!(o.status.code(), Some(0), "{mode} {kind}: {}", stderr(&o));
            assert!(stderr(&o).contains("guest powered off"), "{}", stderr(&o));
        }
    }
}

#[test]
fn a_bad_mode_is_a_usage_error() {
    let o = runner(&["--kernel", "/nonexistent", "--seccomp", "kill"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected on, off, log or trap"),
        "{}",
        stderr(&o)
    );
}
