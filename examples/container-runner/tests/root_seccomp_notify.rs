//! `SCMP_ACT_NOTIFY` with `linux.seccomp.listenerPath` (issue #14 item 3): the runtime
//! hands the container's seccomp listener fd to the listener as runc does, and the
//! listener's answers become the container's system call results. The listener here is
//! the test itself. Needs root and busybox.
#![allow(clippy::unwrap_used)]

mod common;
use common::{lock, require_root_and_busybox, Bundle};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

/// `struct seccomp_notif` (linux/seccomp.h).
#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
struct Resp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;

/// Receives one message and the fd passed with it.
fn recv_with_fd(sock: i32) -> (String, OwnedFd) {
    let mut buf = vec![0u8; 65536];
    let mut cbuf = vec![0u8; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len();
    // SAFETY: `msg` points at live buffers of the lengths it gives.
    let n = unsafe { libc::recvmsg(sock, &mut msg, 0) };
    assert!(n > 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR stays within its control buffer.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    assert!(!cmsg.is_null(), "no descriptor passed");
    // SAFETY: a non-null SCM_RIGHTS header from the kernel carries at least one fd.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>()) };
    buf.truncate(n as usize);
    // SAFETY: the fd was just passed to us; nothing else owns it.
    (String::from_utf8(buf).unwrap(), unsafe {
        OwnedFd::from_raw_fd(fd)
    })
}

#[test]
fn root_seccomp_notify_reaches_the_listener_and_its_answer_the_container() {
    let _g = lock();
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("listener.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    // The listener: takes the fd and the state, then answers every notified call with
    // success (0) without doing it, until the container is gone.
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let (json, fd) = recv_with_fd(conn.as_raw_fd());
        let mut answered = Vec::new();
        loop {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 10_000) } <= 0 || p.revents & libc::POLLHUP != 0 {
                break;
            }
            let mut n = Notif::default();
            // SAFETY: NOTIF_RECV fills a zeroed `struct seccomp_notif`, which `n` is.
            if unsafe { libc::ioctl(fd.as_raw_fd(), NOTIF_RECV, &mut n as *mut Notif) } < 0 {
                break;
            }
            answered.push(n.nr);
            let r = Resp {
                id: n.id,
                val: 0,
                error: 0,
                flags: 0,
            };
            // SAFETY: NOTIF_SEND reads a `struct seccomp_notif_resp`, which `r` is.
            unsafe { libc::ioctl(fd.as_raw_fd(), NOTIF_SEND, &r as *const Resp) };
        }
        (json, answered)
    });
    let sp = sock_path.to_str().unwrap().to_string();
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "mkdir /tmp/notified; echo mkdir=$?; test -d /tmp/notified && echo exists || echo absent",
        ],
        |c| {
            c["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "listenerPath": sp,
                "listenerMetadata": "meta-1",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
            });
        },
    );
    let bundle = b.path().to_str().unwrap().to_string();
    let out = b.ok(&["run", "--bundle", &bundle, "vk-notify"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["mkdir=0", "absent"],
        "{out}"
    );
    let (json, answered) = server.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["fds"], serde_json::json!(["seccompFd"]), "{v}");
    assert_eq!(v["metadata"], "meta-1", "{v}");
    assert_eq!(v["state"]["id"], "vk-notify", "{v}");
    assert!(v["pid"].as_i64().unwrap() > 0, "{v}");
    assert!(
        answered.contains(&83) || answered.contains(&258),
        "mkdir or mkdirat notified: {answered:?}"
    );

    // Notify rules without a listenerPath: refused before anything starts.
    let b = Bundle::new(&["true"], |c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    let bundle = b.path().to_str().unwrap().to_string();
    let o = b.rt(&["run", "--bundle", &bundle, "vk-notify-bad"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("listenerPath is not set"),
        "{err}"
    );
}
