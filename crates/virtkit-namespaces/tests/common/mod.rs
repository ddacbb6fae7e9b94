//! Helpers shared by the root test files.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// Writes straight to an fd: in forked children the harness's output capture would
/// swallow println!.
pub fn raw(fd: i32, s: &str) {
    // SAFETY: writes from a valid buffer of the given length.
    unsafe { libc::write(fd, s.as_ptr().cast(), s.len()) };
}

pub fn require_root_and_busybox() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "root_ tests must run as root");
    assert!(
        Path::new("/bin/busybox").exists(),
        "root_ tests need /bin/busybox: apt-get install busybox-static"
    );
}

/// A minimal busybox rootfs in a temp dir.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for dir in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    // A hard link where it can be: a copy keeps a write fd open for a moment, and a
    // child another test forks meanwhile inherits it until its execve, which then makes
    // our own execve of this busybox fail with ETXTBSY.
    if std::fs::hard_link("/bin/busybox", r.join("bin/busybox")).is_err() {
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    }
    for app in [
        "sh", "cat", "ls", "hostname", "echo", "wc", "mount", "touch",
    ] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(app)).unwrap();
    }
    d
}

/// Execs `/bin/sh -c script` with an empty environment; returns only on failure (97).
pub fn exec_sh(script: &str) -> i32 {
    let sh = std::ffi::CString::new("/bin/sh").unwrap();
    let c = std::ffi::CString::new("-c").unwrap();
    let s = std::ffi::CString::new(script).unwrap();
    let argv = [sh.as_ptr(), c.as_ptr(), s.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
    unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    raw(2, &format!("execve: {}\n", std::io::Error::last_os_error()));
    97
}
