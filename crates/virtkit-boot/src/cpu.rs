//! The boot vCPU's entry state: GDT, IDT, identity page tables and registers.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// Code segment selector (`__BOOT_CS` of the Linux boot protocol).
pub const CODE_SELECTOR: u16 = 0x10;
/// Data segment selector (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Task state segment selector.
pub const TSS_SELECTOR: u16 = 0x20;

/// Errors from writing the entry structures.
#[derive(Debug, thiserror::Error)]
pub enum CpuSetupError {
    /// A write to guest memory failed (the RAM is too small).
    #[error("cannot write the {0} to guest memory: {1}")]
    Write(&'static str, vm_memory::GuestMemoryError),
}

/// The CPU mode the kernel is entered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with paging on (identity map of the first 4 GiB), `rsi` = zero page.
    Long64,
    /// 32-bit protected mode, paging off (PVH boot), `rbx` = `hvm_start_info`.
    Protected32,
}

/// Everything a VMM needs to point the boot vCPU at the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuEntry {
    /// The mode to enter.
    pub mode: EntryMode,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// `rsi` (zero page in [`EntryMode::Long64`]).
    pub rsi: u64,
    /// `rbx` (start info in [`EntryMode::Protected32`]).
    pub rbx: u64,
    /// Guest address of the GDT.
    pub gdt_base: u64,
    /// The GDT as written to guest memory (index = selector / 8).
    pub gdt: [u64; 5],
    /// Guest address of the IDT (empty, limit 7).
    pub idt_base: u64,
    /// CR3 (page table root) for [`EntryMode::Long64`]; 0 otherwise.
    pub cr3: u64,
}

/// A GDT descriptor from flags (access byte + flags nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The GDT for `mode`: null, null, code, data, TSS.
pub fn gdt_for(mode: EntryMode) -> [u64; 5] {
    let code = match mode {
        EntryMode::Long64 => gdt_entry(0xa09b, 0, 0xfffff),
        EntryMode::Protected32 => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Writes the GDT and an empty IDT.
pub fn write_gdt_idt(mem: &GuestMemoryMmap, gdt: &[u64; 5]) -> Result<(), CpuSetupError> {
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|e| CpuSetupError::Write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|e| CpuSetupError::Write("IDT", e))
}

/// Writes identity page tables for the first 4 GiB (2 MiB pages); returns CR3.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, CpuSetupError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| CpuSetupError::Write("page tables", e))
    };
    w(PDPTE_START | 0x03, PML4_START)?;
    for i in 0..4u64 {
        let pd = PDE_START + i * 0x1000;
        w(pd | 0x03, PDPTE_START + i * 8)?;
        for j in 0..512u64 {
            // Present, writable, 2 MiB page.
            w(((i * 512 + j) << 21) | 0x83, pd + j * 8)?;
        }
    }
    Ok(PML4_START)
}

/// Writes GDT, IDT and (for long mode) page tables, and returns the entry state for a kernel
/// whose entry point is `rip`; `boot_info` goes to `rsi` (long mode) or `rbx` (PVH).
pub fn setup_entry(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    rip: u64,
    boot_info: u64,
) -> Result<CpuEntry, CpuSetupError> {
    let gdt = gdt_for(mode);
    write_gdt_idt(mem, &gdt)?;
    let (cr3, rsi, rbx) = match mode {
        EntryMode::Long64 => (write_identity_page_tables(mem)?, boot_info, 0),
        EntryMode::Protected32 => (0, 0, boot_info),
    };
    Ok(CpuEntry {
        mode,
        rip,
        rsp: BOOT_STACK_POINTER,
        rsi,
        rbx,
        gdt_base: GDT_START,
        gdt,
        idt_base: IDT_START,
        cr3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_known_values() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let e = setup_entry(&mem, EntryMode::Long64, 0x1000, ZERO_PAGE_START).unwrap();
        assert_eq!(e.cr3, PML4_START);
        assert_eq!(e.rsi, ZERO_PAGE_START);
        let pde: u64 = mem
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(pde, ((4u64 << 30) - (2 << 20)) | 0x83);
        let gdt2: u64 = mem.read_obj(GuestAddress(GDT_START + 16)).unwrap();
        assert_eq!(gdt2, e.gdt[2]);
    }
}
