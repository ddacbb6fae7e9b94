//! Building guest RAM.

use std::io;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemoryMmap, GuestRegionMmap};

use crate::layout::{self, LayoutError, RamRegion};
use crate::{MIB, PAGE_SIZE};

/// Errors from building guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size breaks the layout's rules.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The size is above the host's RAM.
    #[error("guest memory of {size_mib} MiB is more than the host's {host_mib} MiB of RAM")]
    ExceedsHostRam {
        /// The size asked for, in MiB.
        size_mib: u64,
        /// The host's RAM, in MiB.
        host_mib: u64,
    },
    /// The host's RAM size could not be read.
    #[error("cannot read the host's RAM size from /proc/meminfo: {0}")]
    HostRam(io::Error),
    /// mmap failed.
    #[error("cannot map {size:#x} bytes of guest memory: {error}")]
    Mmap {
        /// The region's size.
        size: u64,
        /// The mmap error.
        error: vm_memory::mmap::MmapRegionError,
    },
    /// madvise failed.
    #[error("madvise on guest memory failed: {0}")]
    Madvise(io::Error),
    /// The backing file could not be inspected.
    #[error("guest memory backing file: {0}")]
    Backing(io::Error),
    /// The backing file is smaller than the RAM.
    #[error("the guest memory file holds {have} bytes, the RAM needs {want}")]
    BackingTooSmall {
        /// Its size.
        have: u64,
        /// The RAM's size.
        want: u64,
    },
    /// vm-memory refused the region list.
    #[error("cannot assemble guest memory: {0}")]
    Collection(vm_memory::GuestRegionCollectionError),
}

/// Huge page use for guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Normal 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages: `madvise(MADV_HUGEPAGE)` on the mapping.
    Transparent,
    /// hugetlbfs pages (`MAP_HUGETLB`, 2 MiB); the size must be a multiple of 2 MiB and the host
    /// must have enough pages reserved.
    Hugetlbfs,
}

/// Guest RAM laid out for x86_64.
#[derive(Debug, Clone)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    regions: Vec<RamRegion>,
    track_dirty: bool,
    huge_pages: HugePages,
}

impl GuestRam {
    /// The guest memory, for loaders and devices.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The RAM regions, in address order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// The total RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Whether dirty-page tracking was asked for (VMMs then register the slots with KVM's
    /// dirty logging on).
    pub fn track_dirty_pages(&self) -> bool {
        self.track_dirty
    }

    /// The huge page mode the RAM was built with.
    pub fn huge_pages(&self) -> HugePages {
        self.huge_pages
    }

    /// Host virtual address and guest region of each mapping, for memory slot registration.
    pub fn host_mappings(&self) -> Vec<(RamRegion, u64)> {
        use vm_memory::GuestMemoryBackend;
        self.regions
            .iter()
            .filter_map(|r| {
                let reg = self.memory.find_region(r.start)?;
                // The region starts at r.start, so its host address is the mapping's base.
                Some((*r, reg.as_ptr() as u64))
            })
            .collect()
    }
}

/// Builds [`GuestRam`] from a size.
#[derive(Debug, Clone)]
pub struct GuestMemoryBuilder {
    size: u64,
    huge_pages: HugePages,
    track_dirty: bool,
    check_host_ram: bool,
    backing: Option<std::sync::Arc<std::fs::File>>,
}

impl GuestMemoryBuilder {
    /// RAM of `size` bytes (a multiple of 4 KiB).
    pub fn new(size: u64) -> Self {
        GuestMemoryBuilder {
            size,
            huge_pages: HugePages::None,
            track_dirty: false,
            check_host_ram: true,
            backing: None,
        }
    }

    /// Maps the RAM privately from `file` instead of anonymous memory: the regions in
    /// order, back to back from offset 0 (the layout [`GuestRam::save_sparse`] writes).
    /// Pages are read from the file when the guest first touches them and copied on its
    /// first write (the file never changes), so mapping costs the same for any size.
    /// The file must hold at least the RAM's size.
    pub fn backing_file(mut self, file: std::fs::File) -> Self {
        self.backing = Some(std::sync::Arc::new(file));
        self
    }

    /// RAM of `mib` MiB.
    pub fn from_mib(mib: u64) -> Self {
        Self::new(mib.saturating_mul(MIB))
    }

    /// Huge page use (default: none).
    pub fn huge_pages(mut self, huge_pages: HugePages) -> Self {
        self.huge_pages = huge_pages;
        self
    }

    /// Marks the RAM for dirty-page tracking.
    pub fn track_dirty_pages(mut self, on: bool) -> Self {
        self.track_dirty = on;
        self
    }

    /// Whether to refuse sizes above the host's RAM (default: yes).
    pub fn check_host_ram(mut self, on: bool) -> Self {
        self.check_host_ram = on;
        self
    }

    /// Maps the RAM.
    pub fn build(self) -> Result<GuestRam, MemoryError> {
        let align = match self.huge_pages {
            HugePages::Hugetlbfs => 2 * MIB,
            _ => PAGE_SIZE,
        };
        layout::check_size(self.size, align)?;
        if self.check_host_ram {
            let host = host_ram_bytes().map_err(MemoryError::HostRam)?;
            if self.size > host {
                return Err(MemoryError::ExceedsHostRam {
                    size_mib: self.size / MIB,
                    host_mib: host / MIB,
                });
            }
        }
        let regions = layout::ram_regions(self.size)?;
        if let Some(f) = &self.backing {
            let have = f.metadata().map_err(MemoryError::Backing)?.len();
            if have < self.size {
                return Err(MemoryError::BackingTooSmall {
                    have,
                    want: self.size,
                });
            }
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut file_offset = 0u64;
        for r in &regions {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
            if self.backing.is_none() {
                flags |= libc::MAP_ANONYMOUS;
            }
            if self.huge_pages == HugePages::Hugetlbfs {
                flags |= libc::MAP_HUGETLB;
            }
            let len = usize::try_from(r.size).map_err(|_| LayoutError::TooLarge {
                size: r.size,
                max: layout::MAX_RAM_SIZE,
            })?;
            let mut builder = MmapRegionBuilder::new(len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags)
                .with_hugetlbfs(self.huge_pages == HugePages::Hugetlbfs);
            if let Some(f) = &self.backing {
                builder = builder
                    .with_file_offset(vm_memory::FileOffset::from_arc(f.clone(), file_offset));
            }
            file_offset = file_offset.saturating_add(r.size);
            // Anonymous RAM with THP: at a 2 MiB-aligned host address, so KVM can map it
            // with 2 MiB pages (see `align`).
            let hole = (self.backing.is_none() && self.huge_pages == HugePages::Transparent)
                .then(|| crate::align::AlignedHole::reserve(len))
                .flatten();
            let region = builder.build().map_err(|error| MemoryError::Mmap {
                size: r.size,
                error,
            })?;
            if let Some(h) = hole {
                if region.as_ptr() as usize != h.addr() {
                    log::debug!(
                        "guest RAM at {:p}, not in the 2 MiB-aligned hole at {:#x}",
                        region.as_ptr(),
                        h.addr()
                    );
                }
                h.release();
            }
            if self.huge_pages == HugePages::Transparent {
                madvise_hugepage(region.as_ptr(), len)?;
            }
            let region = GuestRegionMmap::new(region, r.start).ok_or(LayoutError::TooLarge {
                size: r.size,
                max: layout::MAX_RAM_SIZE,
            })?;
            mapped.push(region);
        }
        Ok(GuestRam {
            memory: GuestMemoryMmap::from_regions(mapped).map_err(MemoryError::Collection)?,
            regions,
            track_dirty: self.track_dirty,
            huge_pages: self.huge_pages,
        })
    }
}

fn madvise_hugepage(ptr: *mut u8, len: usize) -> Result<(), MemoryError> {
    // SAFETY: `ptr..ptr+len` is a mapping we own; MADV_HUGEPAGE only changes the kernel's
    // page-size policy for it and touches no memory.
    let rc = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        return Err(MemoryError::Madvise(io::Error::last_os_error()));
    }
    Ok(())
}

/// The host's total RAM, in bytes: `MemTotal` of /proc/meminfo, read with `sysinfo(2)`,
/// which gives the same figure without the kernel formatting the whole of /proc/meminfo
/// (a tenth of a millisecond of the VMM's start-up, issue #12).
pub fn host_ram_bytes() -> io::Result<u64> {
    // SAFETY: an all-zero `struct sysinfo` is a valid value of that plain C struct.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo(2) writes one `struct sysinfo` into the exclusively borrowed `si`.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(si.totalram.saturating_mul(u64::from(si.mem_unit.max(1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestAddress, GIB};
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn builds_and_is_usable() {
        let ram = GuestMemoryBuilder::from_mib(16)
            .huge_pages(HugePages::Transparent)
            .track_dirty_pages(true)
            .build()
            .unwrap();
        assert_eq!(ram.size(), 16 * MIB);
        assert!(ram.track_dirty_pages());
        assert_eq!(ram.memory().num_regions(), 1);
        ram.memory()
            .write_obj(7u64, GuestAddress(16 * MIB - 8))
            .unwrap();
        assert!(ram
            .memory()
            .write_obj(7u64, GuestAddress(16 * MIB))
            .is_err());
        let maps = ram.host_mappings();
        assert_eq!(maps.len(), 1);
        assert_ne!(maps[0].1, 0);
    }

    #[test]
    fn thp_ram_sits_at_2mib_aligned_host_addresses() {
        // So KVM can map it with 2 MiB pages: guest and host addresses agree mod 2 MiB.
        for mib in [16, 128, 3 * 1024 + 64] {
            let ram = GuestMemoryBuilder::from_mib(mib)
                .huge_pages(HugePages::Transparent)
                .build()
                .unwrap();
            for (region, host) in ram.host_mappings() {
                assert_eq!(
                    (host ^ region.start.0) % (2 * MIB),
                    0,
                    "{mib} MiB: region at {:#x} mapped at {host:#x}",
                    region.start.0
                );
            }
        }
    }

    #[test]
    fn above_gap_region_is_mapped() {
        // NORESERVE mappings cost nothing until touched.
        let ram = GuestMemoryBuilder::new(3 * GIB + 64 * MIB)
            .check_host_ram(false)
            .build()
            .unwrap();
        assert_eq!(ram.regions().len(), 2);
        ram.memory()
            .write_obj(1u8, GuestAddress(layout::MMIO_GAP_END))
            .unwrap();
        assert!(ram
            .memory()
            .write_obj(1u8, GuestAddress(layout::MMIO_GAP_START))
            .is_err());
    }

    #[test]
    fn bad_sizes() {
        assert!(matches!(
            GuestMemoryBuilder::new(0).build(),
            Err(MemoryError::Layout(LayoutError::ZeroSize))
        ));
        assert!(matches!(
            GuestMemoryBuilder::new(4097).build(),
            Err(MemoryError::Layout(LayoutError::Unaligned { .. }))
        ));
        assert!(matches!(
            GuestMemoryBuilder::new(3 * MIB)
                .huge_pages(HugePages::Hugetlbfs)
                .build(),
            Err(MemoryError::Layout(LayoutError::Unaligned { .. }))
        ));
        let host = host_ram_bytes().unwrap();
        // The same figure as /proc/meminfo's MemTotal.
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert_eq!(host, kib * 1024);
        let too_big = (host / MIB + 1) * MIB;
        assert!(matches!(
            GuestMemoryBuilder::new(too_big).build(),
            Err(MemoryError::ExceedsHostRam { .. })
        ));
        assert!(matches!(
            GuestMemoryBuilder::from_mib(u64::MAX).build(),
            Err(MemoryError::Layout(LayoutError::TooLarge { .. }))
        ));
    }
}
