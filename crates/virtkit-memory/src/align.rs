//! A hole at a 2 MiB-aligned host address, for vm-memory's next anonymous mapping.
//!
//! KVM maps guest memory with 2 MiB pages (one nested page-table walk and one fault per
//! 2 MiB instead of 512) only where the guest-physical and the host-virtual address agree
//! modulo 2 MiB, and transparent huge pages only back 2 MiB-aligned host ranges. Linux
//! before 6.7 does not align large anonymous mappings, and vm-memory maps with a null
//! hint, so the RAM lands at whatever page the kernel picks. QEMU aligns its RAM itself.
//!
//! [`AlignedHole::reserve`] maps `len + 2 MiB` with `PROT_NONE`, then unmaps exactly `len`
//! bytes at the 2 MiB-aligned address inside, leaving the rest as guards around a hole of
//! exactly `len`. The kernel places the next `mmap(NULL, len)` in the highest gap that
//! fits, which is that hole unless a gap above it fits too; the caller checks where its
//! mapping landed. [`AlignedHole::release`] (or dropping it) unmaps the guards. vm-memory
//! keeps owning (and unmapping) the RAM mapping itself.

/// 2 MiB, the x86 huge page size.
pub const HUGE_PAGE: usize = 2 << 20;

/// PROT_NONE guards around a hole of `len` bytes at a [`HUGE_PAGE`]-aligned address.
#[derive(Debug)]
pub struct AlignedHole {
    /// The hole's address.
    hole: usize,
    /// The guard mappings (address, length), only those not empty.
    guards: Vec<(usize, usize)>,
}

impl AlignedHole {
    /// Makes the hole; `None` when the address space has no room (the caller maps
    /// unaligned then).
    pub fn reserve(len: usize) -> Option<AlignedHole> {
        let total = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a new PROT_NONE anonymous mapping at an address the kernel picks; it
        // overlaps nothing of ours.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as usize;
        // The kernel placed `total` bytes at `base`, so `base + total` does not overflow and
        // the aligned address plus `len` stays inside the reservation.
        let hole = (base + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
        // SAFETY: `hole..hole+len` lies inside the reservation just made, which only this
        // function knows of.
        if unsafe { libc::munmap(hole as *mut libc::c_void, len) } != 0 {
            // SAFETY: the whole reservation is ours.
            unsafe { libc::munmap(base as *mut libc::c_void, total) };
            return None;
        }
        let end = base + total;
        let guards = [(base, hole - base), (hole + len, end - (hole + len))]
            .into_iter()
            .filter(|&(_, l)| l > 0)
            .collect();
        Some(AlignedHole { hole, guards })
    }

    /// The hole's address.
    pub fn addr(&self) -> usize {
        self.hole
    }

    /// Unmaps the guards.
    pub fn release(self) {}
}

impl Drop for AlignedHole {
    fn drop(&mut self) {
        for &(addr, len) in &self.guards {
            // SAFETY: each guard is a PROT_NONE mapping `reserve` made and nothing else
            // can have been mapped over it (the kernel never reuses a mapped range).
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_mapping_of_that_size_lands_aligned_in_the_hole() {
        let len = 64 << 20;
        let hole = AlignedHole::reserve(len).unwrap();
        assert_eq!(hole.addr() % HUGE_PAGE, 0);
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        hole.release();
        assert_eq!(p as usize % HUGE_PAGE, 0, "mapped at {p:?}");
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
    }
}
