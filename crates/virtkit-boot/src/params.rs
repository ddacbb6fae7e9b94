//! The boot information handed to the kernel: the zero page (`boot_params`) for the 64-bit
//! entry, or `hvm_start_info` for PVH; both carry the e820 memory map and the command line.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use virtkit_memory::RamRegion;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::kernel::LoadedKernel;
use crate::layout::*;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_MAX: usize = 128;

/// Errors from writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// The RAM is too small for the fixed boot structures below 1 MiB.
    #[error("guest RAM must extend past 1 MiB")]
    RamTooSmall,
    /// A write to guest memory failed.
    #[error("cannot write the {0} to guest memory: {1}")]
    Write(&'static str, vm_memory::GuestMemoryError),
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map for `regions`: low RAM below the EBDA, the BIOS area reserved (it holds the MP
/// and ACPI tables), RAM from 1 MiB, and RAM above 4 GiB.
pub fn e820_map(regions: &[RamRegion]) -> Result<Vec<E820Entry>, ParamsError> {
    let low = regions.first().ok_or(ParamsError::RamTooSmall)?;
    if low.start.0 != 0 || low.end().0 <= HIMEM_START {
        return Err(ParamsError::RamTooSmall);
    }
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: BIOS_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low.end().0 - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    map.extend(regions[1..].iter().map(|r| E820Entry {
        addr: r.start.0,
        size: r.size,
        kind: E820_RAM,
    }));
    Ok(map)
}

#[derive(Clone, Copy)]
#[repr(transparent)]
struct BootParams(boot_params);
// SAFETY: boot_params is a plain-old-data repr(C, packed) struct of integers and arrays.
unsafe impl ByteValued for BootParams {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: hvm_start_info is a repr(C) struct of integers without padding holes that matter.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: a repr(C) struct of integers.
unsafe impl ByteValued for ModlistEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: a repr(C) struct of integers.
unsafe impl ByteValued for MemmapEntry {}

/// Writes the zero page for the 64-bit entry at [`ZERO_PAGE_START`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    e820: &[E820Entry],
    cmdline_size: usize,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
) -> Result<(), ParamsError> {
    let mut params = boot_params::default();
    if let Some(h) = kernel.setup_header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if kernel.setup_header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    for (i, e) in e820.iter().take(E820_MAX).enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len().min(E820_MAX) as u8;
    mem.write_obj(BootParams(params), GuestAddress(ZERO_PAGE_START))
        .map_err(|e| ParamsError::Write("zero page", e))
}

/// Writes `hvm_start_info` (with its module list and memory map) at [`PVH_INFO_START`].
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
) -> Result<(), ParamsError> {
    let w = |what, e| ParamsError::Write(what, e);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.map(|a| a.0).unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        mem.write_obj(ModlistEntry(m), GuestAddress(PVH_MODLIST_START))
            .map_err(|e| w("PVH module list", e))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    for (i, e) in e820.iter().enumerate() {
        let m = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(MemmapEntry(m), GuestAddress(at))
            .map_err(|e| w("PVH memory map", e))?;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_INFO_START))
        .map_err(|e| w("PVH start info", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtkit_memory::{GuestMemoryBuilder, GIB, MIB};

    #[test]
    fn e820_covers_ram_and_reserves_bios() {
        let ram = GuestMemoryBuilder::new(4 * GIB)
            .check_host_ram(false)
            .build()
            .unwrap();
        let map = e820_map(ram.regions()).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].addr + map[2].size, 0xc000_0000);
        assert_eq!(map[3].addr, 1 << 32);
        let ram_total: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_total, 4 * GIB - (BIOS_END - EBDA_START));
        let tiny = GuestMemoryBuilder::new(MIB).build().unwrap();
        assert!(matches!(
            e820_map(tiny.regions()),
            Err(ParamsError::RamTooSmall)
        ));
    }
}
