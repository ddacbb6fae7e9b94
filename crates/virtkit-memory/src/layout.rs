//! The x86_64 guest-physical address layout.
//!
//! RAM starts at 0 and runs up to the 32-bit MMIO gap at [`MMIO_GAP_START`]; whatever does not
//! fit below the gap continues at 4 GiB ([`MMIO_GAP_END`]). Devices live in the gap: virtio-mmio
//! windows from [`DEVICE_MMIO_START`], the IOAPIC at [`IOAPIC_START`] and the local APICs at
//! [`LAPIC_START`].

use crate::{GuestAddress, GIB, PAGE_SIZE};

/// Start of the 32-bit MMIO gap (3 GiB).
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End of the 32-bit MMIO gap (4 GiB); RAM resumes here.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First address handed out to devices by [`crate::DeviceAllocator`].
pub const DEVICE_MMIO_START: u64 = 0xD000_0000;
/// End (exclusive) of the device MMIO window, below the IOAPIC.
pub const DEVICE_MMIO_END: u64 = 0xFEC0_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// The largest guest RAM size accepted: 1 TiB (the guest-physical space KVM guests get on
/// common hosts is far larger, but more than this is taken for a typo).
pub const MAX_RAM_SIZE: u64 = 1024 * GIB;

/// Errors from computing a layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A memory size of zero.
    #[error("guest memory size is zero")]
    ZeroSize,
    /// A memory size that is not a whole number of pages (or huge pages).
    #[error("guest memory size {size:#x} is not a multiple of {align:#x} bytes")]
    Unaligned {
        /// The size asked for.
        size: u64,
        /// The alignment required.
        align: u64,
    },
    /// A memory size above [`MAX_RAM_SIZE`].
    #[error("guest memory size {size:#x} is above the maximum of {max:#x} bytes")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The maximum.
        max: u64,
    },
}

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub start: GuestAddress,
    /// Length in bytes.
    pub size: u64,
}

impl RamRegion {
    /// The first address past the region.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.start.0 + self.size)
    }
}

/// Checks a RAM size against the rules of this layout (`align` is the page size in use).
pub fn check_size(size: u64, align: u64) -> Result<(), LayoutError> {
    if size == 0 {
        return Err(LayoutError::ZeroSize);
    }
    if size > MAX_RAM_SIZE {
        return Err(LayoutError::TooLarge {
            size,
            max: MAX_RAM_SIZE,
        });
    }
    let align = align.max(PAGE_SIZE);
    if size % align != 0 {
        return Err(LayoutError::Unaligned { size, align });
    }
    Ok(())
}

/// The RAM regions for `size` bytes of guest RAM: one below the MMIO gap, and a second from
/// 4 GiB when `size` is larger than the gap's start.
pub fn ram_regions(size: u64) -> Result<Vec<RamRegion>, LayoutError> {
    check_size(size, PAGE_SIZE)?;
    let low = size.min(MMIO_GAP_START);
    let mut regions = vec![RamRegion {
        start: GuestAddress(0),
        size: low,
    }];
    if size > low {
        regions.push(RamRegion {
            start: GuestAddress(MMIO_GAP_END),
            size: size - low,
        });
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIB;
    use proptest::prelude::*;

    #[test]
    fn small_memory_is_one_low_region() {
        let r = ram_regions(128 * MIB).unwrap();
        assert_eq!(
            r,
            vec![RamRegion {
                start: GuestAddress(0),
                size: 128 * MIB
            }]
        );
    }

    #[test]
    fn large_memory_splits_around_the_gap() {
        let r = ram_regions(4 * GIB).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].end(), GuestAddress(MMIO_GAP_START));
        assert_eq!(r[1].start, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[1].size, GIB);
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        assert_eq!(ram_regions(0), Err(LayoutError::ZeroSize));
        assert!(matches!(
            ram_regions(MIB + 1),
            Err(LayoutError::Unaligned { .. })
        ));
        assert!(matches!(
            ram_regions(MAX_RAM_SIZE + PAGE_SIZE),
            Err(LayoutError::TooLarge { .. })
        ));
        assert!(matches!(
            check_size(3 * MIB, 2 * MIB),
            Err(LayoutError::Unaligned { align, .. }) if align == 2 * MIB
        ));
    }

    proptest! {
        #[test]
        fn regions_cover_size_and_avoid_gap(pages in 1u64..(8 * GIB / PAGE_SIZE)) {
            let size = pages * PAGE_SIZE;
            let r = ram_regions(size).unwrap();
            prop_assert_eq!(r.iter().map(|r| r.size).sum::<u64>(), size);
            for reg in &r {
                prop_assert!(reg.end().0 <= MMIO_GAP_START || reg.start.0 >= MMIO_GAP_END);
            }
        }
    }
}
