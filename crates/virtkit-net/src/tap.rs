//! Tap devices: a [`Tap`] is an open `/dev/net/tun` file attached to a tap
//! interface, with the 12-byte `virtio_net_hdr_v1` in front of every frame
//! (`IFF_VNET_HDR`), so guest headers pass through unchanged.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::features;
use crate::iovec::GuestIoVec;

/// The longest interface name Linux accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;
/// Size of the `virtio_net_hdr_v1` header the tap carries before each frame.
pub const VNET_HDR_LEN: usize = 12;

const TUN_PATH: &str = "/dev/net/tun";
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

// _IOW('T', n, int) and friends from <linux/if_tun.h>; public for seccomp filters that
// check the ioctls a tap issues.
/// `TUNSETIFF`.
pub const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETPERSIST`.
pub const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `TUNSETOFFLOAD` (issued when the guest's driver negotiates its features).
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`.
pub const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `SIOCGIFFLAGS`.
pub const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
/// `SIOCSIFFLAGS`.
pub const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
/// `SIOCGIFMTU`.
pub const SIOCGIFMTU: libc::c_ulong = 0x8921;
/// `SIOCSIFMTU`.
pub const SIOCSIFMTU: libc::c_ulong = 0x8922;
/// `SIOCSIFHWADDR`.
pub const SIOCSIFHWADDR: libc::c_ulong = 0x8924;

/// `TUN_F_*` offload flags for [`Tap::set_offload`]: what the reader of the
/// tap (the guest) accepts.
pub mod offload {
    /// Frames may carry a partial checksum (`NEEDS_CSUM`).
    pub const TUN_F_CSUM: u32 = 0x01;
    /// TCP over IPv4 segmentation offload.
    pub const TUN_F_TSO4: u32 = 0x02;
    /// TCP over IPv6 segmentation offload.
    pub const TUN_F_TSO6: u32 = 0x04;
    /// TSO with ECN bits.
    pub const TUN_F_TSO_ECN: u32 = 0x08;
    /// UDP fragmentation offload.
    pub const TUN_F_UFO: u32 = 0x10;
}

/// Errors from creating or configuring a tap device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or has forbidden characters.
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The caller lacks CAP_NET_ADMIN.
    #[error("permission denied creating or configuring tap {name:?}: CAP_NET_ADMIN is needed (run as root or grant the capability)")]
    PermissionDenied {
        /// The tap name.
        name: String,
    },
    /// `/dev/net/tun` does not exist.
    #[error("{TUN_PATH} is missing: load the tun module (modprobe tun)")]
    NoTunDevice,
    /// The name belongs to an interface already in use or of another kind.
    #[error("tap {name:?} is busy or the name belongs to a non-tap interface: {source}")]
    Busy {
        /// The tap name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// An MTU outside what the interface accepts.
    #[error("invalid MTU {mtu} for tap {name:?}: {source}")]
    InvalidMtu {
        /// The tap name.
        name: String,
        /// The MTU asked for.
        mtu: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Any other failed system call.
    #[error("{op} on tap {name:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The tap name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// How to create a tap device with [`Tap::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOptions {
    /// Keep the interface after the file is closed (`TUNSETPERSIST`).
    pub persistent: bool,
    /// Set this MTU (`SIOCSIFMTU`); `None` keeps the kernel's (1500).
    pub mtu: Option<u32>,
    /// Bring the interface up.
    pub up: bool,
    /// Join a tap another process holds, as one more queue of it (a live migration's
    /// destination on the same host: see [`crate::tap_share`]). Without it, a tap in use
    /// is refused with [`TapError::Busy`].
    pub shared: bool,
}

impl Default for TapOptions {
    /// Transient, kernel MTU, brought up.
    fn default() -> Self {
        TapOptions {
            persistent: false,
            mtu: None,
            up: true,
            shared: false,
        }
    }
}

/// Check that `name` is a valid Linux interface name.
pub fn validate_ifname(name: &str) -> Result<(), TapError> {
    let bad = |reason| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes (IFNAMSIZ)");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not interface names");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0 || !b.is_ascii())
    {
        return bad("contains '/', ':', whitespace, NUL or non-ASCII characters");
    }
    Ok(())
}

/// The `struct ifreq` of the ioctls used here (name plus a 24-byte union).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    pub(crate) fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = name.len().min(MAX_IFNAME_LEN);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub(crate) fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    pub(crate) fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    pub(crate) fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// `ioctl(fd, req, &mut ifreq)`, the one wrapper of the ifreq ioctls.
pub(crate) fn ioctl_ifreq(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    ifr: &mut IfReq,
) -> io::Result<()> {
    // SAFETY: every request passed here reads and/or writes at most a
    // `struct ifreq` (40 bytes), which `ifr` provides, exclusively borrowed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, req, value)` for the tun ioctls taking an integer argument by
/// value (`TUNSETPERSIST`, `TUNSETOFFLOAD`).
fn ioctl_val(fd: BorrowedFd<'_>, req: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: these requests take a plain integer argument; no memory is
    // accessed through it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, value) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, req, &int)` for the tun ioctls taking a pointer to an int
/// (`TUNSETVNETHDRSZ`).
fn ioctl_int_ptr(fd: BorrowedFd<'_>, req: libc::c_ulong, value: &libc::c_int) -> io::Result<()> {
    // SAFETY: the request reads one `int` through the pointer, which points
    // to a live `c_int`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, value as *const libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A datagram socket for the `SIOC*IF*` ioctls, in the caller's network
/// namespace.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The count argument of `readv`/`writev` for `bufs` (at most `UIO_MAXIOV`:
/// the kernel refuses more).
fn iov_count(bufs: &[GuestIoVec<'_>]) -> libc::c_int {
    libc::c_int::try_from(bufs.len().min(libc::UIO_MAXIOV as usize)).unwrap_or(0)
}

/// `readv(2)` into guest buffers.
pub(crate) fn readv(fd: BorrowedFd<'_>, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
    let iov = GuestIoVec::as_iovecs(bufs);
    // SAFETY: every `GuestIoVec` points at guest memory of its length that
    // stays mapped while `bufs` is borrowed (it was made from a
    // `VolatileSlice`), and guest memory may be written at any time; the
    // kernel writes at most the lengths given, in the first `iov_count`
    // entries of `iov`.
    let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov_count(bufs)) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `writev(2)` from guest buffers.
pub(crate) fn writev(fd: BorrowedFd<'_>, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
    let iov = GuestIoVec::as_iovecs(bufs);
    // SAFETY: every `GuestIoVec` points at guest memory of its length that
    // stays mapped while `bufs` is borrowed (it was made from a
    // `VolatileSlice`); the kernel only reads the first `iov_count` entries
    // of `iov` and the memory they point at.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov_count(bufs)) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The `TUN_F_*` flags matching the guest receive offloads in `acked`
/// (virtio-net feature bits).
pub fn offload_flags_from_features(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let mut flags = 0;
    if has(features::VIRTIO_NET_F_GUEST_CSUM) {
        flags |= offload::TUN_F_CSUM;
        if has(features::VIRTIO_NET_F_GUEST_TSO4) {
            flags |= offload::TUN_F_TSO4;
        }
        if has(features::VIRTIO_NET_F_GUEST_TSO6) {
            flags |= offload::TUN_F_TSO6;
        }
        if has(features::VIRTIO_NET_F_GUEST_ECN) {
            flags |= offload::TUN_F_TSO_ECN;
        }
        if has(features::VIRTIO_NET_F_GUEST_UFO) {
            flags |= offload::TUN_F_UFO;
        }
    }
    flags
}

/// An open tap device with `IFF_VNET_HDR` (12-byte header) and non-blocking
/// I/O. Each `read`/`readv` returns one frame, each `write`/`writev` sends one.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Create (or attach to a persistent) tap interface `name` and configure
    /// it per `opts`. `name` may contain `%d` for the kernel to pick a number.
    pub fn open(name: &str, opts: &TapOptions) -> Result<Tap, TapError> {
        validate_ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice,
                io::ErrorKind::PermissionDenied => TapError::PermissionDenied {
                    name: name.to_string(),
                },
                _ => TapError::Io {
                    op: "opening /dev/net/tun",
                    name: name.to_string(),
                    source: e,
                },
            })?;
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        let ifr = crate::tap_share::attach(file.as_fd(), name, flags).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied {
                    name: name.to_string(),
                },
                Some(libc::EBUSY) | Some(libc::EINVAL) => TapError::Busy {
                    name: name.to_string(),
                    source: e,
                },
                _ => TapError::Io {
                    op: "TUNSETIFF",
                    name: name.to_string(),
                    source: e,
                },
            }
        })?;
        let tap = Tap {
            file,
            name: ifr.name(),
        };
        if !opts.shared && crate::tap_share::held_by_another(&tap.name) {
            // Someone else holds a queue of it: refused, and ours goes with `tap`.
            return Err(TapError::Busy {
                name: tap.name.clone(),
                source: io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl_int_ptr(tap.file.as_fd(), TUNSETVNETHDRSZ, &hdr_len)
            .map_err(|e| tap.err("TUNSETVNETHDRSZ", e))?;
        // No offloads until the guest acks them: the kernel then hands us
        // only complete, checksummed frames.
        tap.set_offload(0)?;
        if let Some(mtu) = opts.mtu {
            tap.set_mtu(mtu)?;
        }
        if opts.up {
            tap.set_up(true)?;
        }
        // Last, so that a failure above leaves no persistent interface.
        tap.set_persistent(opts.persistent)?;
        Ok(tap)
    }

    fn err(&self, op: &'static str, source: io::Error) -> TapError {
        if source.raw_os_error() == Some(libc::EPERM) {
            return TapError::PermissionDenied {
                name: self.name.clone(),
            };
        }
        TapError::Io {
            op,
            name: self.name.clone(),
            source,
        }
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set the `TUN_F_*` offload flags (see [`offload`]).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        ioctl_val(self.file.as_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags))
            .map_err(|e| self.err("TUNSETOFFLOAD", e))
    }

    /// Set the offloads matching the virtio-net features a guest acked.
    pub fn set_offload_from_features(&self, acked: u64) -> Result<(), TapError> {
        self.set_offload(offload_flags_from_features(acked))
    }

    /// Keep the interface after this file closes, or not.
    pub fn set_persistent(&self, persistent: bool) -> Result<(), TapError> {
        ioctl_val(
            self.file.as_fd(),
            TUNSETPERSIST,
            libc::c_ulong::from(persistent),
        )
        .map_err(|e| self.err("TUNSETPERSIST", e))
    }

    fn if_ioctl(
        &self,
        op: &'static str,
        req: libc::c_ulong,
        ifr: &mut IfReq,
    ) -> Result<(), TapError> {
        let sock = control_socket().map_err(|e| self.err("socket", e))?;
        ioctl_ifreq(sock.as_fd(), req, ifr).map_err(|e| self.err(op, e))
    }

    /// Set the interface MTU.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), TapError> {
        let mut ifr = IfReq::new(&self.name);
        ifr.set_int(i32::try_from(mtu).unwrap_or(i32::MAX));
        let sock = control_socket().map_err(|e| self.err("socket", e))?;
        ioctl_ifreq(sock.as_fd(), SIOCSIFMTU, &mut ifr).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                TapError::InvalidMtu {
                    name: self.name.clone(),
                    mtu,
                    source: e,
                }
            } else {
                self.err("SIOCSIFMTU", e)
            }
        })
    }

    /// The interface MTU.
    pub fn mtu(&self) -> Result<u32, TapError> {
        let mut ifr = IfReq::new(&self.name);
        self.if_ioctl("SIOCGIFMTU", SIOCGIFMTU, &mut ifr)?;
        Ok(ifr.int().max(0) as u32)
    }

    /// Bring the interface up or down.
    pub fn set_up(&self, up: bool) -> Result<(), TapError> {
        let mut ifr = IfReq::new(&self.name);
        self.if_ioctl("SIOCGIFFLAGS", SIOCGIFFLAGS, &mut ifr)?;
        let mut flags = ifr.short();
        if up {
            flags |= libc::IFF_UP as i16;
        } else {
            flags &= !(libc::IFF_UP as i16);
        }
        ifr.set_short(flags);
        self.if_ioctl("SIOCSIFFLAGS", SIOCSIFFLAGS, &mut ifr)
    }

    /// Whether the interface is up.
    pub fn is_up(&self) -> Result<bool, TapError> {
        let mut ifr = IfReq::new(&self.name);
        self.if_ioctl("SIOCGIFFLAGS", SIOCGIFFLAGS, &mut ifr)?;
        Ok(ifr.short() & libc::IFF_UP as i16 != 0)
    }

    /// Set the host-side MAC address of the interface (not the guest's).
    pub fn set_host_mac(&self, mac: crate::MacAddr) -> Result<(), TapError> {
        let mut ifr = IfReq::new(&self.name);
        // struct sockaddr { sa_family_t family; char data[14]; }
        ifr.data[..2].copy_from_slice(&(libc::ARPHRD_ETHER).to_ne_bytes());
        ifr.data[2..8].copy_from_slice(&mac.bytes());
        self.if_ioctl("SIOCSIFHWADDR", SIOCSIFHWADDR, &mut ifr)
    }

    /// Read one frame (with its vnet header) straight into the guest
    /// buffers `bufs`, filled in order (one `readv`); returns its length.
    pub fn read_iovec(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        readv(self.file.as_fd(), bufs)
    }

    /// Write one frame (with its vnet header) gathered straight from the
    /// guest buffers `bufs` (one `writev`).
    pub fn write_iovec(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        writev(self.file.as_fd(), bufs)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl io::Read for &Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }
}

impl io::Write for &Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation() {
        assert!(validate_ifname("tap0").is_ok());
        assert!(validate_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            "a234567890123456",
            "a/b",
            "a b",
            ".",
            "..",
            "tap:0",
            "tä",
        ] {
            let e = validate_ifname(bad).unwrap_err();
            assert!(matches!(e, TapError::InvalidName { .. }), "{bad:?}: {e}");
        }
        let e = validate_ifname("averyveryverylongname").unwrap_err();
        assert!(e.to_string().contains("longer than 15"), "{e}");
    }

    #[test]
    fn offload_mapping() {
        use features::*;
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | (1u64 << b));
        assert_eq!(offload_flags_from_features(0), 0);
        // TSO without CSUM is not allowed by the spec: no offload.
        assert_eq!(
            offload_flags_from_features(f(&[VIRTIO_NET_F_GUEST_TSO4])),
            0
        );
        assert_eq!(
            offload_flags_from_features(f(&[VIRTIO_NET_F_GUEST_CSUM])),
            offload::TUN_F_CSUM
        );
        assert_eq!(
            offload_flags_from_features(f(&[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_UFO,
                VIRTIO_NET_F_HOST_TSO4,
            ])),
            offload::TUN_F_CSUM | offload::TUN_F_TSO4 | offload::TUN_F_TSO6 | offload::TUN_F_UFO
        );
    }

    #[test]
    fn ifreq_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let r = IfReq::new("tap0");
        assert_eq!(r.name(), "tap0");
    }
}
