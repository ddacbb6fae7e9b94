//! The Intel MultiProcessor Specification 1.4 table, for SMP guests booting without ACPI (and as
//! the fallback Linux looks for).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_DEFAULT_PHYS_BASE, EBDA_START, IO_APIC_DEFAULT_PHYS_BASE};

/// The most vCPUs the table (8-bit APIC ids, one left for the IOAPIC) can describe.
pub const MAX_CPUS: u8 = 254;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero vCPUs or more than [`MAX_CPUS`].
    #[error("an MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    BadCpuCount(u8),
    /// The write failed.
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The IOAPIC's id in the MP table and MADT (after the vCPUs' APIC ids).
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// The table's bytes for placement at `base` (floating pointer first, then the configuration
/// table).
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::BadCpuCount(cpus));
    }
    let mut t: Vec<u8> = Vec::new();
    // Configuration table header (44 bytes); length and checksum patched below.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&0u16.to_le_bytes()); // length
    t.push(4); // spec revision 1.4
    t.push(0); // checksum
    t.extend_from_slice(b"VIRTKIT ");
    t.extend_from_slice(b"000000000000");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&0u16.to_le_bytes()); // entry count
    t.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // extended table length/checksum
    let mut entries: u16 = 0;
    for id in 0..cpus {
        t.push(0); // processor
        t.push(id);
        t.push(APIC_VERSION);
        t.push(if id == 0 { 0x3 } else { 0x1 }); // enabled (| bootstrap)
        t.extend_from_slice(&0x0600u32.to_le_bytes()); // signature: family 6
        t.extend_from_slice(&0x0201u32.to_le_bytes()); // features: APIC + FPU
        t.extend_from_slice(&[0u8; 8]);
        entries += 1;
    }
    t.extend_from_slice(&[1, 0]); // bus 0
    t.extend_from_slice(b"ISA   ");
    entries += 1;
    let ioapic = ioapic_id(cpus);
    t.extend_from_slice(&[2, ioapic, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    entries += 1;
    for irq in 0..IOAPIC_PINS {
        // IRQ 0 as ExtINT like Firecracker, the rest as INT, identity-mapped to IOAPIC pins.
        let kind = if irq == 0 { 3 } else { 0 };
        t.extend_from_slice(&[3, kind, 0, 0, 0, irq, ioapic, irq]);
        entries += 1;
    }
    // LINT0 ExtINT, LINT1 NMI on every local APIC.
    t.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    t.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    entries += 2;
    let len = t.len() as u16;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&entries.to_le_bytes());
    t[7] = checksum(&t);

    let mut out = Vec::with_capacity(16 + t.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&((base + 16) as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(4);
    out.push(0); // checksum
    out.extend_from_slice(&[0; 5]);
    out[10] = checksum(&out);
    out.extend_from_slice(&t);
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 64, MAX_CPUS] {
            let b = build(cpus, EBDA_START).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[0..16]), 0);
            assert_eq!(
                u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64,
                EBDA_START + 16
            );
            let t = &b[16..];
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0);
            let procs = t[44..].chunks(20).take(cpus as usize);
            assert!(procs.enumerate().all(|(i, p)| p[0] == 0 && p[1] == i as u8));
            assert_eq!(u16::from_le_bytes([t[34], t[35]]), cpus as u16 + 2 + 24 + 2);
        }
        assert!(build(0, 0).is_err());
        assert!(build(255, 0).is_err());
    }
}
