//! CVE-2019-5736: never run inside a container from the host binary.
//!
//! Before `create`, `run` and `exec`, the runtime re-executes itself from a sealed
//! memfd copy of `/proc/self/exe`, so a container process that opens `/proc/<pid>/exe`
//! (or execs `/proc/self/exe` through a `#!` trick) reaches an immutable anonymous copy,
//! never the file on the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

const MFD_CLOEXEC: u32 = 1;
const MFD_ALLOW_SEALING: u32 = 2;
const MFD_EXEC: u32 = 0x10;
const F_ADD_SEALS: i32 = 1033;
const F_GET_SEALS: i32 = 1034;
const F_SEAL_SEAL: i32 = 1;
const F_SEAL_SHRINK: i32 = 2;
const F_SEAL_GROW: i32 = 4;
const F_SEAL_WRITE: i32 = 8;
const ALL_SEALS: i32 = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

/// Whether the running binary is already a sealed memfd.
pub fn is_sealed() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl on a valid fd.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), F_GET_SEALS) };
    seals >= 0 && seals & ALL_SEALS == ALL_SEALS
}

fn memfd() -> Result<OwnedFd> {
    let name = CString::new("container-runner")?;
    for flags in [
        MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC,
        MFD_CLOEXEC | MFD_ALLOW_SEALING,
    ] {
        // SAFETY: valid name; we own the returned fd.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: fresh fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
    }
    bail!("memfd_create: {}", io::Error::last_os_error())
}

/// Re-executes from a sealed memfd copy unless already running from one. Returns only
/// when already sealed (or on error).
pub fn ensure() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
    let exe = std::fs::File::open("/proc/self/exe").context("open /proc/self/exe")?;
    let len = exe.metadata()?.len();
    let mfd = memfd()?;
    let mut off: libc::off_t = 0;
    let mut left = len as usize;
    while left > 0 {
        // SAFETY: both fds are valid; the kernel copies between them.
        let n = unsafe { libc::sendfile(mfd.as_raw_fd(), exe.as_raw_fd(), &mut off, left) };
        if n <= 0 {
            bail!(
                "copy /proc/self/exe to memfd: {}",
                io::Error::last_os_error()
            );
        }
        left -= n as usize;
    }
    // SAFETY: fcntl on a valid fd.
    if unsafe { libc::fcntl(mfd.as_raw_fd(), F_ADD_SEALS, ALL_SEALS) } < 0 {
        bail!("seal memfd: {}", io::Error::last_os_error());
    }
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            b.push(b'=');
            b.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            CString::new(b)
        })
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let empty = CString::new("")?;
    // SAFETY: NULL-terminated arrays of valid C strings; AT_EMPTY_PATH executes the fd.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            mfd.as_raw_fd(),
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    bail!("execveat memfd: {}", io::Error::last_os_error())
}
