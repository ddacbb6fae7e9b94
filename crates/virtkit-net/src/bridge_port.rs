//! Putting an interface on a bridge with the bridge ioctl (`SIOCBRADDIF`, as
//! `brctl addif` does) rather than an rtnetlink message.
//!
//! This is the one bridge operation a VMM needs (`tap=...,bridge=BR`), and
//! doing it without the rtnetlink message code keeps that code out of the
//! VMM binary: 0.5 MB of text, measured (docs/benchmarks.md, VMM memory).
//! Container networks, which need the rest of rtnetlink anyway, keep using
//! [`RtNetlink::attach`](crate::bridge::RtNetlink::attach).

use std::io;
use std::os::fd::AsFd;

use crate::bridge::BridgeError;
use crate::tap::{control_socket, ioctl_ifreq, validate_ifname, IfReq};

/// `SIOCBRADDIF`: add the interface whose index is in the request to the
/// bridge named in it.
pub const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Attach interface `iface` (a tap, a veth...) to the existing bridge
/// `bridge`, in the caller's network namespace. Needs CAP_NET_ADMIN.
pub fn add_port(bridge: &str, iface: &str) -> Result<(), BridgeError> {
    validate_ifname(bridge)?;
    validate_ifname(iface)?;
    let sock = control_socket().map_err(|e| ioctl_err("socket", bridge, e))?;
    let index_of = |name: &str| crate::iface::index(sock.as_fd(), name);
    index_of(bridge).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) => BridgeError::BridgeNotFound(bridge.to_string()),
        _ => ioctl_err("SIOCGIFINDEX", bridge, e),
    })?;
    let index = index_of(iface).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) => BridgeError::InterfaceNotFound(iface.to_string()),
        _ => ioctl_err("SIOCGIFINDEX", iface, e),
    })?;
    let mut ifr = IfReq::new(bridge);
    ifr.set_int(index);
    ioctl_ifreq(sock.as_fd(), SIOCBRADDIF, &mut ifr)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) => BridgeError::BridgeNotFound(bridge.to_string()),
            // The kernel answers EOPNOTSUPP for a device that is no bridge master.
            Some(libc::EOPNOTSUPP) => BridgeError::NotABridge(bridge.to_string()),
            // The port vanished between the two calls.
            Some(libc::EINVAL) => BridgeError::InterfaceNotFound(iface.to_string()),
            Some(libc::EPERM) => BridgeError::PermissionDenied {
                op: "attach to bridge",
                name: iface.to_string(),
            },
            Some(libc::EBUSY) => BridgeError::AlreadyExists(format!(
                "a bridge or bond holding {iface:?} (detach it first)"
            )),
            _ => ioctl_err("SIOCBRADDIF", iface, e),
        })
        .or_else(|e| {
            // Already a port of this very bridge (a shared tap: see crate::tap_share):
            // nothing to do.
            match (&e, master_of(iface)) {
                (BridgeError::AlreadyExists(_), Some(m)) if m == bridge => Ok(()),
                _ => Err(e),
            }
        })
}

/// The bridge (or bond) holding `iface`, from sysfs; `None` when it has none or sysfs
/// does not show the caller's `iface`.
fn master_of(iface: &str) -> Option<String> {
    let link = std::fs::read_link(crate::iface::sysfs_dir(iface)?.join("master")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

fn ioctl_err(op: &'static str, name: &str, source: io::Error) -> BridgeError {
    BridgeError::Ioctl {
        op,
        name: name.to_string(),
        source,
    }
}
