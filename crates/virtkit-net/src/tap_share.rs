//! A tap held by two VMMs at once: the live migration of a VM with a network
//! device between two processes on the same host.
//!
//! The destination must open the VM's tap while the source still holds it (the
//! source runs until the last round). A single-queue tap refuses a second file
//! (`EBUSY`), so [`Tap::open`](crate::tap::Tap::open) creates taps multi-queue
//! (`IFF_MULTI_QUEUE`): each file is one queue, and the kernel spreads incoming
//! frames over the queues. The destination joins with
//! [`TapOptions::shared`](crate::tap::TapOptions::shared); the source's queue goes
//! when it ends, and the frames that reached it while the VM was paused are lost,
//! as in any migration's downtime.
//!
//! Any other open of a tap in use is still refused: after attaching, `Tap::open`
//! counts the tap's queues and gives up when another holder has one (two
//! processes racing to open the same free tap then both give up rather than
//! share). The count comes from sysfs, which shows the network namespace it was
//! mounted in: when that is not the caller's (the interface's index there is not
//! the one the caller sees), the count is unknown and the open goes ahead. A tap
//! created single-queue by someone else (`ip tuntap add` without `multi_queue`)
//! is opened as it is and cannot be shared.

use std::fs;
use std::io;
use std::os::fd::BorrowedFd;

use crate::tap::{ioctl_ifreq, IfReq, TUNSETIFF};

/// One queue (file) of a tap that several may hold.
const IFF_MULTI_QUEUE: i16 = 0x0100;

/// Attaches the `/dev/net/tun` file `tun` to the tap `name` (made when missing) with
/// `flags`, multi-queue when it can: a single-queue tap made by someone else refuses
/// that flag (`EINVAL`), and is then attached as it is.
pub(crate) fn attach(tun: BorrowedFd<'_>, name: &str, flags: i16) -> io::Result<IfReq> {
    let mut ifr = IfReq::new(name);
    ifr.set_short(flags | IFF_MULTI_QUEUE);
    match ioctl_ifreq(tun, TUNSETIFF, &mut ifr) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            ifr = IfReq::new(name);
            ifr.set_short(flags);
            ioctl_ifreq(tun, TUNSETIFF, &mut ifr).map(|()| ifr)
        }
        r => r.map(|()| ifr),
    }
}

/// Whether another file than the caller's one holds a queue of the tap `name` (which
/// the caller has just attached to), as far as sysfs shows it.
pub fn held_by_another(name: &str) -> bool {
    attached_queues(name).is_some_and(|n| n > 1)
}

/// How many queues (files) the caller's tap `name` has attached now: one `tx-N` per
/// attached queue in `/sys/class/net/NAME/queues`. `None` when sysfs does not show that
/// interface (no `/sys`, or a sysfs of another network namespace).
pub fn attached_queues(name: &str) -> Option<usize> {
    let dir = fs::read_dir(crate::iface::sysfs_dir(name)?.join("queues")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("tx-"))
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_one_queue_and_a_missing_interface_none() {
        assert_eq!(attached_queues("lo"), Some(1));
        assert_eq!(attached_queues("vk-no-such-if"), None);
    }
}
