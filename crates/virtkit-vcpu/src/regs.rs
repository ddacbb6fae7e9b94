//! Register state: MSR defaults, LAPIC LINT0/LINT1, FPU, and the boot entry state.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use virtkit_boot::cpu::{CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use virtkit_boot::{CpuEntry, EntryMode};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// MSRs set on every vCPU and their values: SYSENTER/SYSCALL state cleared, fast strings on,
/// MTRRs on with write-back default. The TSC is left alone: KVM synchronizes the vCPUs' TSCs
/// when it creates them, and a later write per vCPU would make Linux find them unsynchronized.
pub const DEFAULT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SYSCALL_MASK
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
];

/// The [`DEFAULT_MSRS`] KVM knows (`supported` is KVM's MSR index list).
pub fn default_msrs(supported: &[u32]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    let entries: Vec<kvm_msr_entry> = DEFAULT_MSRS
        .iter()
        .filter(|(i, _)| supported.contains(i))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries)
}

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI, as a PC BIOS leaves them.
pub fn set_lint(l: &mut kvm_lapic_state) {
    let v0 = lapic_reg(l, APIC_LVT0);
    set_lapic_reg(l, APIC_LVT0, delivery_mode(v0, APIC_MODE_EXTINT));
    let v1 = lapic_reg(l, APIC_LVT1);
    set_lapic_reg(l, APIC_LVT1, delivery_mode(v1, APIC_MODE_NMI));
}

/// The LINT0/LINT1 delivery modes (bits 8–10) of a LAPIC state.
pub fn lint_modes(l: &kvm_lapic_state) -> (u32, u32) {
    (
        (lapic_reg(l, APIC_LVT0) >> 8) & 7,
        (lapic_reg(l, APIC_LVT1) >> 8) & 7,
    )
}

/// The FPU at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn default_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// General registers for the entry.
pub fn entry_regs(e: &CpuEntry) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: e.rip,
        rsp: e.rsp,
        rbp: e.rsp,
        rsi: e.rsi,
        rbx: e.rbx,
        ..Default::default()
    }
}

/// A KVM segment from a GDT descriptor at `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff);
    let g = ((entry >> 55) & 1) as u8;
    // KVM wants the limit in bytes.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Applies the entry's segments, descriptor tables and control registers to `s`.
pub fn apply_entry_sregs(e: &CpuEntry, s: &mut kvm_sregs) {
    let seg = |sel: u16| segment_from_gdt(e.gdt[usize::from(sel / 8)], sel);
    let data = seg(DATA_SELECTOR);
    s.cs = seg(CODE_SELECTOR);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = seg(TSS_SELECTOR);
    s.gdt.base = e.gdt_base;
    s.gdt.limit = (std::mem::size_of_val(&e.gdt) - 1) as u16;
    s.idt.base = e.idt_base;
    s.idt.limit = 7;
    match e.mode {
        EntryMode::Long64 => {
            s.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
            s.cr3 = e.cr3;
            s.cr4 = X86_CR4_PAE;
            s.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Protected32 => {
            s.cr0 = X86_CR0_PE | X86_CR0_ET;
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtkit_boot::cpu::gdt_for;

    #[test]
    fn segments_decode() {
        let gdt = gdt_for(EntryMode::Long64);
        let cs = segment_from_gdt(gdt[2], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let gdt32 = gdt_for(EntryMode::Protected32);
        let cs32 = segment_from_gdt(gdt32[2], CODE_SELECTOR);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tr = segment_from_gdt(gdt[4], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn lint_modes_set() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700 | 0x30);
        set_lint(&mut l);
        assert_eq!(lint_modes(&l), (APIC_MODE_EXTINT, APIC_MODE_NMI));
        assert_eq!(lapic_reg(&l, APIC_LVT0) & 0xff, 0x30);
    }

    #[test]
    fn msr_filtering() {
        let m = default_msrs(&[0x174, 0x2ff, 0x9999]).unwrap();
        let idx: Vec<u32> = m.as_slice().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![0x174, 0x2ff]);
    }
}
