//! Minimal ACPI tables (built with the `acpi_tables` crate): RSDP, XSDT, a hardware-reduced FADT
//! whose sleep control and reset registers are I/O ports the VMM handles, a DSDT holding `_S5`
//! (so `poweroff` works), and a MADT listing the local APICs and the IOAPIC.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::mptable::ioapic_id;

const OEM_ID: [u8; 6] = *b"VIRTKT";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: no VGA, no CMOS RTC (Linux would spend seconds probing one that is not
/// there; kvm-clock gives it the wall clock). The 8042 flag stays off so Linux skips the slow
/// i8042 probe; `reboot=k` still resets through port 0x64.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);
/// MADT flag: the board also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;

/// Errors from writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The write failed.
    #[error("cannot write ACPI table {0} to guest memory: {1}")]
    Write(&'static str, vm_memory::GuestMemoryError),
    /// The tables outgrew their area below 1 MiB (too many vCPUs).
    #[error("ACPI tables do not fit below 1 MiB")]
    TooLarge,
}

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = sum.wrapping_neg();
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// A device described in the DSDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcpiDevice {
    /// A 16550 UART (`PNP0501`) at an I/O port with an edge-triggered GSI. With hardware-reduced
    /// ACPI Linux has no legacy ISA IRQs, so the serial port's interrupt only works when the
    /// port is described here.
    Serial {
        /// `_UID` (0 for COM1).
        uid: u8,
        /// I/O base.
        port: u16,
        /// GSI.
        irq: u32,
    },
    /// A virtio-mmio device window (`LNRO0005`, which Linux's virtio_mmio driver matches) with
    /// an edge-triggered GSI. Under hardware-reduced ACPI this is how the guest learns of the
    /// device with a usable interrupt: a `virtio_mmio.device=` command-line entry names a raw
    /// IRQ number that has no legacy mapping there.
    VirtioMmio {
        /// `_UID`, unique among the virtio-mmio devices (also names the device `V<uid>`).
        uid: u16,
        /// Start of the register window (32-bit MMIO).
        base: u32,
        /// Length of the window.
        len: u32,
        /// GSI.
        irq: u32,
    },
    /// Raw AML bytes appended to the DSDT as they are.
    Aml(Vec<u8>),
}

impl AcpiDevice {
    fn aml(&self) -> Vec<u8> {
        match self {
            AcpiDevice::Serial { uid, port, irq } => {
                let name = format!("_SB_.COM{}", uid + 1);
                let hid = aml::EISAName::new("PNP0501");
                let io = aml::IO::new(*port, *port, 1, 8);
                let int = aml::Interrupt::new(true, true, false, false, *irq);
                let crs = aml::ResourceTemplate::new(vec![&io, &int]);
                let uid = *uid;
                let hid = aml::Name::new("_HID".into(), &hid);
                let uid = aml::Name::new("_UID".into(), &uid);
                let crs = aml::Name::new("_CRS".into(), &crs);
                let dev = aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]);
                bytes_of(&dev)
            }
            AcpiDevice::VirtioMmio {
                uid,
                base,
                len,
                irq,
            } => {
                let name = format!("_SB_.V{:03X}", uid & 0xfff);
                let hid = aml::Name::new("_HID".into(), &"LNRO0005");
                let uid = u32::from(*uid);
                let uid = aml::Name::new("_UID".into(), &uid);
                let mem = aml::Memory32Fixed::new(true, *base, *len);
                let int = aml::Interrupt::new(true, true, false, false, *irq);
                let crs = aml::ResourceTemplate::new(vec![&mem, &int]);
                let crs = aml::Name::new("_CRS".into(), &crs);
                let dev = aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]);
                bytes_of(&dev)
            }
            AcpiDevice::Aml(b) => b.clone(),
        }
    }
}

/// The DSDT: `Name (_S5, Package () { 5 })` and the `devices`.
pub fn dsdt(devices: &[AcpiDevice]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VKITDSDT", OEM_REVISION);
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8]));
    dsdt.append_slice(&bytes_of(&s5));
    for d in devices {
        dsdt.append_slice(&d.aml());
    }
    dsdt.as_slice().to_vec()
}

/// The FADT pointing at the DSDT at `dsdt_addr`.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, *b"VKITFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.sleep_control_reg = io_gas(ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_gas(ACPI_SLEEP_CONTROL_PORT);
    b.reset_reg = io_gas(ACPI_RESET_PORT);
    b.reset_value = ACPI_RESET_VALUE;
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    bytes_of(&b.finalize())
}

/// The MADT for `cpus` vCPUs.
pub fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        *b"VKITMADT",
        OEM_REVISION,
        LocalInterruptController::Address(APIC_DEFAULT_PHYS_BASE),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(ioapic_id(cpus), IO_APIC_DEFAULT_PHYS_BASE, 0));
    let mut bytes = bytes_of(&m);
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

/// Writes the tables (with `devices` in the DSDT) from [`ACPI_START`]; returns the RSDP's
/// address.
pub fn write(
    mem: &GuestMemoryMmap,
    cpus: u8,
    devices: &[AcpiDevice],
) -> Result<GuestAddress, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // The XSDT has two entries: 36 + 16 bytes.
    let dsdt_addr = align(xsdt_addr + 36 + 16);
    let dsdt = dsdt(devices);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus);
    if madt_addr + madt.len() as u64 > BIOS_END {
        return Err(AcpiError::TooLarge);
    }
    let mut xsdt = XSDT::new(OEM_ID, *b"VKITXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let put = |name, bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| AcpiError::Write(name, e))
    };
    put("DSDT", &dsdt, dsdt_addr)?;
    put("FADT", &fadt, fadt_addr)?;
    put("MADT", &madt, madt_addr)?;
    put("XSDT", &bytes_of(&xsdt), xsdt_addr)?;
    put("RSDP", &bytes_of(&Rsdp::new(OEM_ID, xsdt_addr)), rsdp_addr)?;
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn tables_are_well_formed() {
        let d = dsdt(&[]);
        assert_eq!(&d[0..4], b"DSDT");
        assert_eq!(le32(&d, 4) as usize, d.len());
        assert_eq!(sum(&d), 0);
        // NameOp "_S5_" PackageOp ... BytePrefix 5
        let body = &d[36..];
        assert_eq!(body[0], 0x08);
        assert_eq!(&body[1..5], b"_S5_");
        assert_eq!(body[5], 0x12);
        assert_eq!(&body[body.len() - 2..], &[0x0a, 5]);

        let com = dsdt(&[AcpiDevice::Serial {
            uid: 0,
            port: 0x3f8,
            irq: 4,
        }]);
        assert_eq!(sum(&com), 0);
        assert_eq!(le32(&com, 4) as usize, com.len());
        let body = &com[d.len()..];
        assert_eq!(body[0..2], [0x5b, 0x82], "DeviceOp");
        // The extended IRQ descriptor carries GSI 4.
        let irq = body.windows(2).position(|w| w == [0x89, 6]).unwrap();
        assert_eq!(le32(body, irq + 5), 4);

        let f = fadt(0x1234);
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(sum(&f), 0);
        assert_eq!(le32(&f, 112) & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        // X_DSDT at offset 140, sleep control register GAS at 244 (I/O space, port).
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0x1234);
        assert_eq!(f[244], 1);
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            u64::from(ACPI_SLEEP_CONTROL_PORT)
        );

        let m = madt(3);
        assert_eq!(&m[0..4], b"APIC");
        assert_eq!(sum(&m), 0);
        assert_eq!(le32(&m, 4) as usize, m.len());
        assert_eq!(le32(&m, 40), MADT_PCAT_COMPAT);
        assert_eq!(m.len(), 44 + 3 * 8 + 12);
    }

    #[test]
    fn written_tables_link_up() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write(&mem, 2, &[]).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[0..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let mut x = [0u8; 52];
        mem.read_slice(&mut x, GuestAddress(xsdt)).unwrap();
        assert_eq!(&x[0..4], b"XSDT");
        assert_eq!(sum(&x), 0);
        let fadt_addr = u64::from_le_bytes(x[36..44].try_into().unwrap());
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(fadt_addr)).unwrap();
        assert_eq!(&sig, b"FACP");
    }
}
