//! Loading the kernel image (ELF vmlinux or bzImage) and the initrd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::HIMEM_START;

/// The highest initrd address for kernels that do not say (boot protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors from loading the kernel and initrd.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel file could not be read.
    #[error("cannot read the kernel image: {0}")]
    Read(std::io::Error),
    /// The file is neither an ELF vmlinux nor a bzImage.
    #[error("not a Linux kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel,
    /// linux-loader refused the ELF image.
    #[error("cannot load the ELF kernel: {0}")]
    Elf(linux_loader::loader::Error),
    /// linux-loader refused the bzImage.
    #[error("cannot load the bzImage kernel: {0}")]
    BzImage(linux_loader::loader::Error),
    /// The initrd could not be read.
    #[error("cannot read the initrd: {0}")]
    InitrdRead(std::io::Error),
    /// The initrd does not fit between the kernel and the kernel's highest initrd address.
    #[error(
        "the initrd ({size} bytes) does not fit in guest memory below {max:#x} above the kernel"
    )]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Highest address usable.
        max: u64,
    },
    /// Copying the initrd to guest memory failed.
    #[error("cannot copy the initrd into guest memory: {0}")]
    InitrdCopy(vm_memory::GuestMemoryError),
}

/// The kernel image's format and the entry it will be started through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// ELF vmlinux with a PVH note: 32-bit PVH entry.
    ElfPvh,
    /// ELF vmlinux without a PVH note: 64-bit entry (`startup_64`).
    Elf64,
    /// bzImage: 64-bit entry of the protected-mode part (load address + 0x200).
    BzImage,
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The format.
    pub kind: KernelKind,
    /// The entry point to start the boot vCPU at.
    pub entry: GuestAddress,
    /// Where the kernel was loaded.
    pub load_addr: GuestAddress,
    /// The first address above the kernel (including its decompression room for a bzImage).
    pub end: u64,
    /// The bzImage setup header.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// The highest address the kernel accepts for the initrd's last byte.
    pub fn initrd_addr_max(&self) -> u64 {
        match &self.setup_header {
            Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => {
                u64::from(h.initrd_addr_max)
            }
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }
}

/// Loads an ELF vmlinux (preferring its PVH entry) or a bzImage at 1 MiB.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, KernelError> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(KernelError::Read)?;
    file.seek(SeekFrom::Start(0)).map_err(KernelError::Read)?;
    if n == 4 && magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
            .map_err(KernelError::Elf)?;
        let (kind, entry) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (KernelKind::ElfPvh, addr),
            _ => (KernelKind::Elf64, r.kernel_load),
        };
        return Ok(LoadedKernel {
            kind,
            entry,
            load_addr: GuestAddress(HIMEM_START),
            end: r.kernel_end,
            setup_header: None,
        });
    }
    let r = match BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => r,
        Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage
            | linux_loader::loader::bzimage::Error::ReadBzImageHeader
            | linux_loader::loader::bzimage::Error::SeekBzImageHeader,
        )) => return Err(KernelError::NotAKernel),
        Err(e) => return Err(KernelError::BzImage(e)),
    };
    let init_size = r.setup_header.map(|h| u64::from(h.init_size)).unwrap_or(0);
    Ok(LoadedKernel {
        kind: KernelKind::BzImage,
        entry: GuestAddress(r.kernel_load.0 + 0x200),
        load_addr: r.kernel_load,
        end: r.kernel_end.max(r.kernel_load.0 + init_size),
        setup_header: r.setup_header,
    })
}

/// Copies the initrd as high as allowed: its last byte at or below `min(initrd_addr_max,
/// low_ram_end - 1)`, page-aligned, above the kernel. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    low_ram_end: u64,
    file: &mut File,
) -> Result<(GuestAddress, u64), KernelError> {
    use vm_memory::Bytes;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(KernelError::InitrdRead)?;
    file.seek(SeekFrom::Start(0))
        .map_err(KernelError::InitrdRead)?;
    let max = kernel.initrd_addr_max().min(low_ram_end.saturating_sub(1));
    let too_large = KernelError::InitrdTooLarge { size, max };
    let start = (max + 1)
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel.end)
        .ok_or(too_large)?;
    let len = usize::try_from(size).map_err(|_| KernelError::InitrdTooLarge { size, max })?;
    mem.read_exact_volatile_from(GuestAddress(start), file, len)
        .map_err(KernelError::InitrdCopy)?;
    Ok((GuestAddress(start), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
    }

    #[test]
    fn junk_is_not_a_kernel() {
        for junk in [&b""[..], b"MZ", b"#!/bin/sh\necho hi\n", &[0u8; 4096]] {
            assert!(
                matches!(
                    load_kernel(&mem(), &mut file(junk)),
                    Err(KernelError::NotAKernel)
                ),
                "{junk:?}"
            );
        }
        // A truncated ELF is an ELF error, not a panic.
        assert!(matches!(
            load_kernel(&mem(), &mut file(b"\x7fELF\x02\x01\x01")),
            Err(KernelError::Elf(_))
        ));
    }

    #[test]
    fn initrd_goes_high_and_respects_limits() {
        let m = mem();
        let k = LoadedKernel {
            kind: KernelKind::Elf64,
            entry: GuestAddress(HIMEM_START),
            load_addr: GuestAddress(HIMEM_START),
            end: 2 << 20,
            setup_header: None,
        };
        let (addr, size) = load_initrd(&m, &k, 8 << 20, &mut file(&[7u8; 10000])).unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr.0 % 4096, 0);
        assert!(addr.0 + size <= 8 << 20 && addr.0 >= (8 << 20) - 16384);
        let h = setup_header {
            version: 0x020f,
            initrd_addr_max: (4 << 20) - 1,
            ..Default::default()
        };
        let k2 = LoadedKernel {
            setup_header: Some(h),
            ..k
        };
        let (addr, _) = load_initrd(&m, &k2, 8 << 20, &mut file(&[7u8; 10000])).unwrap();
        assert!(addr.0 + 10000 <= 4 << 20);
        assert!(matches!(
            load_initrd(&m, &k, 8 << 20, &mut file(&vec![0u8; 7 << 20])),
            Err(KernelError::InitrdTooLarge { .. })
        ));
    }
}
