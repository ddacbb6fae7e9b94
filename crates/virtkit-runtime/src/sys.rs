//! Process and file helpers the verbs share: joining namespaces, `clone` used like
//! fork, pid files, the exec fifo, waiting for children.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use virtkit_namespaces::namespace::NamespaceType;

use crate::error::{bail, Context, Result};
use crate::host::Host;
use crate::util;

pub(crate) fn open_ns(path: &Path) -> Result<OwnedFd> {
    let f =
        std::fs::File::open(path).with_context(|| format!("open namespace {}", path.display()))?;
    Ok(f.into())
}

pub(crate) fn setns_self(fd: &OwnedFd, t: NamespaceType) -> Result<()> {
    // SAFETY: setns on a valid fd.
    if unsafe { libc::setns(fd.as_raw_fd(), t.clone_flag()) } < 0 {
        bail!(
            "join {} namespace: {}",
            t.proc_name(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `clone(2)` with `flags` used like fork: returns 0 in the child.
pub(crate) fn clone_fork(flags: i32) -> Result<i32> {
    // SAFETY: without CLONE_VM the child gets a copy of our address space and continues
    // here like after fork(); we are single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        bail!("clone: {}", std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("vktmp");
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("write pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write pid file {}", path.display()))?;
    Ok(())
}

pub(crate) fn mkfifo(path: &Path) -> Result<()> {
    let c = util::cstring(&path.to_string_lossy())?;
    // SAFETY: valid path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o622) } < 0 {
        bail!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // The umask took the write bit for others, which init needs in a user namespace.
    // SAFETY: valid path.
    if unsafe { libc::chmod(c.as_ptr(), 0o622) } < 0 {
        bail!(
            "chmod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub(crate) fn open_path(path: &Path) -> Result<OwnedFd> {
    let c = util::cstring(&path.to_string_lossy())?;
    // SAFETY: valid path; we own the returned fd.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "open {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits for our child `pid`; returns its exit code (128+signal when killed).
pub(crate) fn wait_child(pid: i32) -> Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("waitpid {pid}: {e}");
        }
        break;
    }
    Ok(if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    })
}

pub(crate) fn wait_dead(host: &dyn Host, pid: i32, start: u64, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while host.alive(pid, start) {
        // Reap if it is our child (run in the foreground).
        host.reap(pid);
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
