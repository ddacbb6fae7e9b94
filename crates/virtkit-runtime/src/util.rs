//! Small helpers: time, process liveness, signals, the parent/child sync socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::error::{bail, Context, Result};

/// RFC 3339 UTC time with nanoseconds, as runc prints `created`.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Formats seconds since the epoch (UTC) as RFC 3339.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`) and state
/// letter of `pid`, or `None` if it does not exist.
pub fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let start = f.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// Parses a signal given as a number, "TERM" or "SIGTERM".
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal number {n}");
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => bail!("unknown signal {s:?}"),
    };
    Ok(n)
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // 0 and negative pids mean process groups (or everything): never what a saved
    // container pid (0 before init exists) should reach.
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A C string from a Rust string (NUL bytes are an error).
pub fn cstring(s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: the kernel just created both fds and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message on a seqpacket socket.
pub fn send_msg(fd: RawFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: valid buffer of the given length.
    let r = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message (empty on EOF).
pub fn recv_msg(fd: RawFd) -> io::Result<Vec<u8>> {
    // A descriptor passed with a message nobody expects one with is closed here.
    recv_msg_fd(fd).map(|(m, _)| m)
}

/// Sends `fd` over the unix socket `sock` with SCM_RIGHTS (as runc sends the pty master
/// to `--console-socket`), with `name` as the data.
pub fn send_fd(sock: RawFd, fd: RawFd, name: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed msghdr and control buffer are valid starting points; all
    // pointers set below point at live locals of the right sizes.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: name.as_ptr() as *mut libc::c_void,
            iov_len: name.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one message from `fd` and the descriptor passed with it (SCM_RIGHTS), if
/// any; the descriptor is close-on-exec. A peer that closed with our message unread in
/// its queue (init failing before it read "go") makes the kernel report ECONNRESET once,
/// ahead of what the peer sent before closing: we read on, so its last words (an error
/// message) are not lost; the next read returns them, or end-of-file.
pub fn recv_msg_fd(fd: RawFd) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 65536];
    let space = {
        // SAFETY: CMSG_SPACE only computes a size.
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize }
    };
    let mut cbuf = vec![0u8; space];
    let mut reset = false;
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers of the
        // lengths given.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` describes valid buffers; the kernel writes within their lengths.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.raw_os_error() == Some(libc::ECONNRESET) && !reset {
                reset = true;
                continue;
            }
            return Err(e);
        }
        let mut passed = None;
        // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros walk it
        // within `msg_controllen`, and an SCM_RIGHTS header of our size holds one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                && (*cmsg).cmsg_len >= libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize
            {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                passed = Some(OwnedFd::from_raw_fd(raw));
            }
        }
        buf.truncate(r as usize);
        return Ok((buf, passed));
    }
}

/// Connects to the unix socket at `path` (close-on-exec).
pub fn connect_unix(path: &Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connect to console socket {}", path.display()))?;
    Ok(OwnedFd::from(s))
}

/// Writes `s` straight to fd 2 (safe after fork).
pub fn raw_stderr(s: &str) {
    // SAFETY: writes from a valid buffer of the given length.
    unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
        // A saved pid of 0 (or less) must not become a process-group kill.
        assert_eq!(kill(0, 0).unwrap_err().raw_os_error(), Some(libc::ESRCH));
        assert_eq!(kill(-1, 0).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn the_last_message_of_a_peer_that_reset_is_still_read() {
        let (a, b) = seqpacket_pair().unwrap();
        use std::os::fd::AsRawFd;
        // `a` sends "go" that `b` never reads; `b` answers with an error and closes.
        send_msg(a.as_raw_fd(), b"go").unwrap();
        send_msg(b.as_raw_fd(), b"Eboom").unwrap();
        drop(b);
        assert_eq!(recv_msg(a.as_raw_fd()).unwrap(), b"Eboom");
        assert_eq!(recv_msg(a.as_raw_fd()).unwrap(), b"");
    }

    #[test]
    fn a_passed_descriptor_arrives_with_its_message() {
        use std::os::fd::AsRawFd;
        let (a, b) = seqpacket_pair().unwrap();
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        send_fd(a.as_raw_fd(), f.as_raw_fd(), b"seccomp").unwrap();
        send_msg(a.as_raw_fd(), b"ready").unwrap();
        let (m, fd) = recv_msg_fd(b.as_raw_fd()).unwrap();
        assert_eq!(m, b"seccomp");
        let fd = fd.expect("a descriptor");
        assert_ne!(fd.as_raw_fd(), f.as_raw_fd());
        let (m, fd) = recv_msg_fd(b.as_raw_fd()).unwrap();
        assert_eq!((m.as_slice(), fd.is_none()), (&b"ready"[..], true));
    }

    #[test]
    fn own_stat() {
        let (st, state) = proc_stat(std::process::id() as i32).unwrap();
        assert!(st > 0);
        assert!(state == 'R' || state == 'S');
        use crate::host::{Host, LinuxHost};
        assert!(LinuxHost.alive(std::process::id() as i32, st));
        assert!(!LinuxHost.alive(std::process::id() as i32, st + 1));
        assert!(!LinuxHost.alive(0, st));
    }
}
