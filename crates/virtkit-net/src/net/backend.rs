//! [`NetBackend`]: where the device's frames go, and its implementations
//! for [`Tap`] and [`UnixDatagram`].

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;

use crate::iovec::GuestIoVec;
use crate::tap::{self, Tap};

/// Where frames go: a file descriptor on which each read returns one frame
/// and each write sends one, both prefixed with the 12-byte
/// `virtio_net_hdr_v1`, in non-blocking mode (`WouldBlock` when there is
/// nothing to read or no room to write).
///
/// The frames move straight between the backend and guest memory: the
/// device hands over the guest's buffers as [`GuestIoVec`]s, which a
/// backend passes to `readv`/`writev` ([`GuestIoVec::as_iovecs`]) or
/// accesses through [`GuestIoVec::as_volatile_slice`].
///
/// Implemented by [`Tap`] and by [`UnixDatagram`] (for tests, benchmarks, or
/// a userspace switch at the other end of a socket pair). The file
/// descriptor ([`AsRawFd`]) is what the event loop polls.
pub trait NetBackend: AsRawFd + Send + fmt::Debug {
    /// Read one frame into `bufs`, filled in order; returns its length.
    fn read_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize>;
    /// Write one frame gathered from `bufs` in order; returns the bytes
    /// sent.
    fn write_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize>;
    /// Apply the guest's acked virtio-net features (receive offloads).
    fn set_features(&self, acked: u64) -> io::Result<()>;
}

impl NetBackend for Tap {
    fn read_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        self.read_iovec(bufs)
    }
    fn write_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        self.write_iovec(bufs)
    }
    fn set_features(&self, acked: u64) -> io::Result<()> {
        self.set_offload_from_features(acked)
            .map_err(io::Error::other)
    }
}

impl NetBackend for UnixDatagram {
    fn read_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        tap::readv(self.as_fd(), bufs)
    }
    fn write_frame(&self, bufs: &[GuestIoVec<'_>]) -> io::Result<usize> {
        tap::writev(self.as_fd(), bufs)
    }
    fn set_features(&self, _acked: u64) -> io::Result<()> {
        Ok(())
    }
}
