//! `start`: releases the container's init from the exec fifo, then runs the
//! poststart hooks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use oci_spec::runtime::Spec;

use crate::error::{bail, Result};
use crate::hooks::{self, After};
use crate::state::{Container, Status};
use crate::util;
use crate::Runtime;

impl Runtime {
    /// `start`: releases container `id`'s init from the exec fifo (it execs the
    /// container's process), then runs the poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        match self.status(&c) {
            Status::Created => {}
            Status::Stopped => bail!("cannot start a container that has stopped"),
            s => bail!("cannot start a container in the {} state", s.as_str()),
        }
        let fifo = c.fifo();
        let cp = util::cstring(&fifo.to_string_lossy())?;
        // SAFETY: valid path; we own the returned fd.
        let fd = unsafe {
            libc::open(
                cp.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!("open exec fifo: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        loop {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n > 0 {
                let mut b = [0u8; 1];
                // SAFETY: valid 1-byte buffer.
                let r = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
                if r == 1 {
                    break;
                }
            }
            if !self.host().alive(c.saved.pid, c.saved.start_time) {
                let _ = std::fs::remove_file(&fifo);
                bail!("container init exited before start");
            }
        }
        let _ = std::fs::remove_file(&fifo);
        hooks::run_after(self.host(), &c, None, After::Start);
        Ok(())
    }
}

/// `start` within `run`: init, which has no exec fifo, started at "ready"; what is left
/// are the poststart hooks.
pub(crate) fn start_run(rt: &Runtime, c: &Container, spec: &Spec) {
    hooks::run_after(rt.host(), c, Some(spec), After::Start);
}
