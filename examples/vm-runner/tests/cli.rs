//! vm-runner as a process: bad input gives a clear one-line error and a non-zero status, and
//! tiny hand-made ELF "kernels" that power off or reset through the same ports Linux uses end
//! it with status 0. Tests that start a VM are `kvm_` and need /dev/kvm.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm-runner"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in: {err}"
    );
    let lines: Vec<_> = err.lines().filter(|l| l.contains("error")).collect();
    assert!(lines.len() <= 1, "one error line: {err}");
}

/// A minimal ELF64 with one PT_LOAD of `code` at 2 MiB (entered in 64-bit mode).
fn tiny_kernel(code: &[u8]) -> tempfile::NamedTempFile {
    let mut t = tempfile::NamedTempFile::new().unwrap();
    t.write_all(&virtkit_boot::testing::tiny_elf(code)).unwrap();
    t
}

#[test]
fn missing_kernel_argument() {
    let o = runner(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert_clean_failure(&o, "--kernel or --restore is required");
}

#[test]
fn kvm_missing_kernel_file() {
    let o = runner(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(o.status.code(), Some(1));
    assert_clean_failure(&o, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn kvm_not_a_kernel() {
    let mut t = tempfile::NamedTempFile::new().unwrap();
    t.write_all(b"#!/bin/sh\necho this is not a kernel\n")
        .unwrap();
    let o = runner(&["--kernel", t.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_clean_failure(&o, "not a Linux kernel");
    let o = runner(&["--kernel", "/"]);
    assert_clean_failure(&o, "cannot open kernel");
}

#[test]
fn bad_memory_and_cpus() {
    let k = tiny_kernel(&[0xf4]);
    let kp = k.path().to_str().unwrap();
    assert_clean_failure(&runner(&["--kernel", kp, "--memory", "0"]), "--memory");
    assert_clean_failure(&runner(&["--kernel", kp, "--cpus", "0"]), "--cpus");
    assert_clean_failure(&runner(&["--kernel", kp, "--cpus", "x"]), "not a number");
    let host_mib = virtkit_memory::host_ram_bytes().unwrap() >> 20;
    let too_much = (host_mib + 1024).to_string();
    assert_clean_failure(
        &runner(&["--kernel", kp, "--memory", &too_much]),
        "more than the host",
    );
    assert_clean_failure(
        &runner(&["--kernel", kp, "--memory", "99999999999999"]),
        "memory",
    );
}

#[test]
fn kvm_too_many_cpus() {
    let k = tiny_kernel(&[0xf4]);
    let o = runner(&["--kernel", k.path().to_str().unwrap(), "--cpus", "100000"]);
    assert_eq!(o.status.code(), Some(1));
    assert_clean_failure(&o, "above the maximum");
}

#[test]
fn kvm_acpi_poweroff_exits_zero() {
    // mov dx, 0x3b0; mov al, (5 << 2) | (1 << 5); out dx, al; hlt
    let k = tiny_kernel(&[0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4]);
    let o = runner(&["--kernel", k.path().to_str().unwrap(), "--serial", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("vm-runner: guest powered off"));
}

#[test]
fn kvm_i8042_reset_exits_zero_and_serial_output() {
    // Write "ok\n" to COM1 (0x3f8), then 0xfe to port 0x64.
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xb0, b'o', 0xee,             // mov al, 'o'; out dx, al
        0xb0, b'k', 0xee,
        0xb0, b'\n', 0xee,
        0xb0, 0xfe, 0xe6, 0x64,       // mov al, 0xfe; out 0x64, al
        0xf4,
    ];
    let k = tiny_kernel(&code);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("serial.txt");
    let serial = format!("file:{}", out.display());
    let o = runner(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--cpus",
        "2",
        "--memory",
        "64",
        "--serial",
        &serial,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("vm-runner: guest rebooted"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ok\n");
}

#[test]
fn kvm_closed_standard_descriptors_stay_closed_to_the_vmm_files() {
    // Started with stdin and stdout closed (as a careless supervisor may), the VMM must not
    // open /dev/kvm or a VM on descriptor 0 or 1 and then write the guest's serial output
    // into it: it opens /dev/null there first, as std's start-up does.
    use std::os::unix::process::CommandExt;
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xb0, b'o', 0xee,             // mov al, 'o'; out dx, al
        0xb0, b'\n', 0xee,
        0xb0, 0xfe, 0xe6, 0x64,       // mov al, 0xfe; out 0x64, al (reset)
        0xf4,
    ];
    let k = tiny_kernel(&code);
    let mut c = Command::new(env!("CARGO_BIN_EXE_vm-runner"));
    c.args(["--kernel", k.path().to_str().unwrap(), "--memory", "16"])
        .args(["--serial", "stdio"])
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls close(2), which is
    // async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::close(0);
            libc::close(1);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("vm-runner: guest rebooted"), "{err}");
    assert!(!err.contains("serial output failed"), "{err}");
}

#[test]
fn kvm_startup_stats_line() {
    let k = tiny_kernel(&[0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4]);
    let o = Command::new(env!("CARGO_BIN_EXE_vm-runner"))
        .args(["--kernel", k.path().to_str().unwrap(), "--serial", "none"])
        .env("VM_RUNNER_STARTUP_STATS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let line = err.lines().find(|l| l.contains("startup cpu_ms=")).unwrap();
    let v: f64 = line
        .split("cpu_ms=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v > 0.0);
}

#[test]
fn kvm_console_input_reaches_the_guest() {
    // Echo COM1 input back until a newline, then power off.
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
        0xec,                   // in al, dx
        0xa8, 0x01,             // test al, 1 (data ready)
        0x74, 0xfb,             // jz back to in
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, 0xee,             // in al, dx; out dx, al
        0x3c, 0x0a,             // cmp al, '\n'
        0x75, 0xed,             // jne start
        0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4, // ACPI poweroff
    ];
    let k = tiny_kernel(&code);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm-runner"))
        .args(["--kernel", k.path().to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from the host\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from the host\n");
}

#[test]
fn bad_disk_specs_are_usage_errors() {
    for (spec, needle) in [
        ("format=raw", "path=PATH is required"),
        ("path=x.img,format=vmdk", "format must be raw or qcow2"),
        ("path=x.img,readonly=maybe", "takes on or off"),
        ("path=x.img,backing=on", "backing=on needs format=qcow2"),
        ("path=x.img,speed=9", "unknown key"),
    ] {
        let o = runner(&["--kernel", "k", "--disk", spec]);
        assert_eq!(o.status.code(), Some(2), "{spec}: {}", stderr(&o));
        assert_clean_failure(&o, needle);
    }
}

#[test]
fn kvm_missing_or_corrupt_disk_image() {
    let k = tiny_kernel(&[0xf4]);
    let kp = k.path().to_str().unwrap();
    let o = runner(&[
        "--kernel",
        kp,
        "--disk",
        "path=/nonexistent/d.qcow2,format=qcow2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_clean_failure(&o, "disk /nonexistent/d.qcow2");
    let mut junk = tempfile::NamedTempFile::new().unwrap();
    junk.write_all(&[0x55; 4096]).unwrap();
    let spec = format!("path={},format=qcow2", junk.path().display());
    let o = runner(&["--kernel", kp, "--disk", &spec]);
    assert_eq!(o.status.code(), Some(1));
    assert_clean_failure(&o, "not a qcow2 image");
}

#[test]
fn kvm_disk_then_poweroff_exits_zero() {
    // A raw disk is attached (window, irqfd, ioeventfd, DSDT entry) and the guest powers off.
    let k = tiny_kernel(&[0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xf4]);
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let spec = format!("path={}", disk.path().display());
    let o = runner(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--serial",
        "none",
        "--disk",
        &spec,
        "--disk",
        &format!("{spec},readonly=on"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn root_net_missing_bridge_and_long_tap_name() {
    let k = tiny_kernel(&[0xf4]);
    let kp = k.path().to_str().unwrap();
    let o = runner(&["--kernel", kp, "--net", "tap=vkclitest0,bridge=vknobr9"]);
    assert_eq!(o.status.code(), Some(1));
    assert_clean_failure(&o, "bridge \"vknobr9\" does not exist");
    let o = runner(&["--kernel", kp, "--net", "tap=averyveryverylongtapname"]);
    assert_eq!(o.status.code(), Some(2));
    assert_clean_failure(&o, "longer than 15 bytes");
}
