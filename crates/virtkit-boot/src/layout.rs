//! Where the boot structures go in guest memory (all below 1 MiB, like Firecracker).

/// The GDT.
pub const GDT_START: u64 = 0x500;
/// The (empty) IDT, right after the GDT.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages, identity map of the first 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted, with its NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI tables (RSDP first), inside the BIOS area Linux scans.
pub const ACPI_START: u64 = 0xe0000;
/// End of the reserved BIOS area.
pub const BIOS_END: u64 = 0x10_0000;
/// Where kernels are loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// The I/O port of the ACPI sleep control register named in the FADT (hardware-reduced ACPI).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3b0;
/// The I/O port of the ACPI reset register named in the FADT.
pub const ACPI_RESET_PORT: u16 = 0x3c0;
/// The value the guest writes to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 4;
/// The sleep control value for S5 (soft off): SLP_TYP 5 in bits 2–4, SLP_EN in bit 5.
pub const ACPI_S5_SLEEP_VALUE: u8 = (5 << 2) | (1 << 5);
/// Local APIC MMIO base.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// IOAPIC MMIO base.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
