//! Guest-memory buffers in the layout `readv(2)`/`writev(2)` take, so that
//! frames move between a tap and the guest without a copy and without
//! trusting a caller's raw pointers.
//!
//! A [`GuestIoVec`] can only be made from a [`VolatileSlice`], so it always
//! points at memory that stays mapped for its lifetime; a `&[GuestIoVec]`
//! is a `struct iovec` array the kernel can use as it is.
//!
//! ```
//! use virtkit_net::GuestIoVec;
//! use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
//! let slice = mem.get_slice(GuestAddress(0x100), 16).unwrap();
//! let bufs = [GuestIoVec::from(slice)];
//! bufs[0].as_volatile_slice().copy_from(&[7u8; 4]);
//! assert_eq!(GuestIoVec::as_iovecs(&bufs)[0].iov_len, 16);
//! ```

use std::fmt;
use std::marker::PhantomData;

use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use virtkit_virtio::GuestMem;

/// `UIO_MAXIOV`: the most iovecs one `readv`/`writev` takes.
pub const MAX_IOV: usize = 1024;

// A `GuestIoVec` keeps the address a `VolatileSlice` gives through its
// pointer guard after the guard is gone. That holds for ordinary mappings,
// whose guard is just the address; vm-memory's `xen` feature makes the guard
// own a temporary mapping (a larger guard), which this refuses to build with.
const _: () = assert!(
    std::mem::size_of::<PtrGuardMut>() == 2 * std::mem::size_of::<usize>(),
    "vm-memory's pointer guards own mappings (xen feature): GuestIoVec would dangle"
);

/// Errors from gathering guest buffers into iovecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IoVecError {
    /// Some byte of the range is outside guest memory.
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The buffers need more than [`MAX_IOV`] iovecs.
    #[error("more than {MAX_IOV} buffer segments")]
    TooManySegments,
}

/// One buffer of guest memory, laid out as a `struct iovec` and valid for
/// `'a`: what [`Tap::read_iovec`](crate::tap::Tap::read_iovec) and
/// [`NetBackend`](crate::net::NetBackend) take. Made from a
/// [`VolatileSlice`], so holding one proves the memory stays mapped.
///
/// The memory is shared with the guest: access it only through
/// [`GuestIoVec::as_volatile_slice`] or hand it to the kernel.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct GuestIoVec<'a> {
    iov: libc::iovec,
    _mem: PhantomData<VolatileSlice<'a>>,
}

impl<'a> From<VolatileSlice<'a>> for GuestIoVec<'a> {
    fn from(s: VolatileSlice<'a>) -> Self {
        GuestIoVec {
            iov: libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            },
            _mem: PhantomData,
        }
    }
}

impl<'a> GuestIoVec<'a> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.iov.iov_len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.iov.iov_len == 0
    }

    /// The buffer as a [`VolatileSlice`], to copy data in or out.
    pub fn as_volatile_slice(&self) -> VolatileSlice<'a> {
        // SAFETY: `self` was made from a `VolatileSlice<'a>` of this address
        // and length (the only constructor), so the memory is `len` bytes
        // long, stays mapped for `'a`, and is only accessed volatilely.
        unsafe { VolatileSlice::new(self.iov.iov_base.cast(), self.iov.iov_len) }
    }

    /// `bufs` as the `struct iovec` array a system call takes, for backends
    /// that make their own `readv`/`writev`/`sendmsg` calls: the pointers
    /// are valid for as long as `bufs` is borrowed.
    pub fn as_iovecs<'s>(bufs: &'s [GuestIoVec<'a>]) -> &'s [libc::iovec] {
        // SAFETY: `GuestIoVec` is `repr(transparent)` over `libc::iovec`
        // (its other field is a zero-sized marker), so the slices have the
        // same layout; the result borrows `bufs`.
        unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len()) }
    }
}

impl fmt::Debug for GuestIoVec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestIoVec")
            .field("base", &self.iov.iov_base)
            .field("len", &self.iov.iov_len)
            .finish()
    }
}

/// iovecs into one guest memory, kept with (a handle on) that memory so
/// that they stay valid for as long as they are stored: the device gathers
/// descriptor chains into one and hands its [`GuestIoVecs::as_slice`] to the
/// backend, across event-loop wake-ups.
pub(crate) struct GuestIoVecs {
    mem: GuestMem,
    /// Every entry was made from a `VolatileSlice` of `mem`.
    iov: Vec<libc::iovec>,
}

// SAFETY: the iovecs only point into the mappings of `mem`, which this
// struct holds (an `Arc`-shared mmap that is `Send` and stays mapped while
// held); they are plain addresses with no thread affinity.
unsafe impl Send for GuestIoVecs {}

impl fmt::Debug for GuestIoVecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestIoVecs(len {})", self.iov.len())
    }
}

impl GuestIoVecs {
    /// Empty, for buffers in `mem`, with room for `capacity` iovecs.
    pub(crate) fn new(mem: GuestMem, capacity: usize) -> Self {
        GuestIoVecs {
            mem,
            iov: Vec::with_capacity(capacity),
        }
    }

    /// Append iovecs covering guest range `addr..addr+len` (split at region
    /// boundaries). On error some of the range may have been appended:
    /// [`GuestIoVecs::truncate`] back.
    pub(crate) fn push(&mut self, addr: GuestAddress, len: u32) -> Result<(), IoVecError> {
        for s in self.mem.get_slices(addr, len as usize) {
            let s = s.map_err(|_| IoVecError::OutsideMemory { addr: addr.0, len })?;
            if self.iov.len() >= MAX_IOV {
                return Err(IoVecError::TooManySegments);
            }
            self.iov.push(GuestIoVec::from(s).iov);
        }
        Ok(())
    }

    /// Number of iovecs.
    pub(crate) fn len(&self) -> usize {
        self.iov.len()
    }

    /// Keep the first `n` iovecs.
    pub(crate) fn truncate(&mut self, n: usize) {
        self.iov.truncate(n);
    }

    /// Remove the first `n` iovecs.
    pub(crate) fn remove_front(&mut self, n: usize) {
        self.iov.drain(..n);
    }

    /// Remove every iovec.
    pub(crate) fn clear(&mut self) {
        self.iov.clear();
    }

    /// The iovecs, valid while `self` is borrowed.
    pub(crate) fn as_slice(&self) -> &[GuestIoVec<'_>] {
        // SAFETY: `GuestIoVec` is `repr(transparent)` over `libc::iovec`.
        // Every entry came from a `VolatileSlice` of `self.mem` (`push` is
        // the only way in), and `self.mem` keeps those mappings alive for
        // as long as `self` is borrowed, which bounds the lifetime handed
        // out.
        unsafe {
            std::slice::from_raw_parts(self.iov.as_ptr().cast::<GuestIoVec<'_>>(), self.iov.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn gathers_across_regions_and_refuses_bad_ranges() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let mut v = GuestIoVecs::new(mem.clone(), 4);
        v.push(GuestAddress(0xff0), 0x20).unwrap();
        assert_eq!(v.len(), 2, "split at the region boundary");
        let lens: Vec<usize> = v.as_slice().iter().map(GuestIoVec::len).collect();
        assert_eq!(lens, [0x10, 0x10]);
        v.as_slice()[1].as_volatile_slice().copy_from(&[5u8; 0x10]);
        let mut back = [0u8; 0x10];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, [5u8; 0x10]);
        assert_eq!(
            v.push(GuestAddress(0x1ff0), 0x20),
            Err(IoVecError::OutsideMemory {
                addr: 0x1ff0,
                len: 0x20
            })
        );
        v.truncate(2);
        v.remove_front(1);
        assert_eq!(v.len(), 1);
        v.clear();
        assert!(v.as_slice().is_empty());
    }

    #[test]
    fn caps_the_iovec_count() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mut v = GuestIoVecs::new(mem, 0);
        for _ in 0..MAX_IOV {
            v.push(GuestAddress(0), 1).unwrap();
        }
        assert_eq!(v.push(GuestAddress(0), 1), Err(IoVecError::TooManySegments));
    }
}
