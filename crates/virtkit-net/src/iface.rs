//! An interface as the caller's network namespace sees it: its index (an ioctl on a
//! socket, which belongs to the caller's namespace) and its sysfs directory, which is
//! only worth reading when `/sys` shows that same namespace (sysfs shows the one it was
//! mounted in).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use crate::tap::{control_socket, ioctl_ifreq, IfReq};

/// The index of interface `name`, asked through `sock` (`SIOCGIFINDEX`).
pub(crate) fn index(sock: BorrowedFd<'_>, name: &str) -> io::Result<i32> {
    let mut ifr = IfReq::new(name);
    ioctl_ifreq(sock, libc::SIOCGIFINDEX, &mut ifr)?;
    Ok(ifr.int())
}

/// `/sys/class/net/NAME` when it is the caller's interface `name`: `None` when there is
/// no such interface, no `/sys`, or a sysfs of another network namespace.
pub(crate) fn sysfs_dir(name: &str) -> Option<PathBuf> {
    let sock = control_socket().ok()?;
    sysfs_dir_of(name, index(sock.as_fd(), name).ok()?)
}

/// `/sys/class/net/NAME` when the interface shown there has index `ifindex`.
fn sysfs_dir_of(name: &str, ifindex: i32) -> Option<PathBuf> {
    let dir = PathBuf::from(format!("/sys/class/net/{name}"));
    let shown: i32 = fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (shown == ifindex).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_shown_other_indexes_and_names_are_not() {
        let lo: i32 = fs::read_to_string("/sys/class/net/lo/ifindex")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(sysfs_dir("lo"), Some(PathBuf::from("/sys/class/net/lo")));
        assert_eq!(sysfs_dir_of("lo", lo + 1000), None);
        assert_eq!(sysfs_dir("vk-no-such-if"), None);
    }
}
