//! minimal-vmm as a process: usage and missing-file errors, and (`kvm_`, needs /dev/kvm) a
//! tiny guest that sees its disk's virtio-mmio window, prints to COM1 and powers off.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minimal-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn usage_and_missing_files_are_clear_errors() {
    let o = vmm(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("usage"));
    let o = vmm(&["/nonexistent/vmlinux", "/nonexistent/disk"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot open kernel /nonexistent/vmlinux"),
        "{err}"
    );
}

#[test]
fn kvm_boots_a_guest_with_one_disk() {
    // Print "ok\n" on COM1, then power off through the ACPI sleep port (S5).
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xb0, b'o', 0xee,             // mov al, 'o'; out dx, al
        0xb0, b'k', 0xee,
        0xb0, b'\n', 0xee,
        0x66, 0xba, 0xb0, 0x03,       // mov dx, 0x3b0
        0xb0, 0x34, 0xee,             // mov al, S5|SLP_EN; out dx, al
        0xf4,
    ];
    let mut k = tempfile::NamedTempFile::new().unwrap();
    k.write_all(&virtkit_boot::testing::tiny_elf(&code))
        .unwrap();
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let o = vmm(&[k.path().to_str().unwrap(), disk.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("minimal-vmm: guest powered off"), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
}
