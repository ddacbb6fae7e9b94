//! Minimal ACPI tables (built with the `acpi_tables` crate): RSDP, XSDT, a hardware-reduced FADT
//! whose sleep control and reset registers are I/O ports the VMM handles, a DSDT holding `_S5`
//! (so `poweroff` works) and the devices (COM1, virtio-mmio windows, the Generic Event Device
//! with its power button), and a MADT listing the local APICs and the IOAPIC.

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

/// The power-button bit of the Generic Event Device's event register
/// ([`AcpiDevice::Ged`]).
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 3;
/// Length in bytes of the Generic Event Device's event register.
pub const GED_REGISTER_LEN: u32 = 1;

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
    /// A Generic Event Device (`ACPI0013`, `\_SB_.GED_`), the hardware-reduced ACPI way to
    /// raise events, and the power button (`PNP0C0C`, `\_SB_.PWRB`) it serves. Its `_CRS`
    /// holds one edge-triggered GSI; on that interrupt Linux's GED driver runs `_EVT`, which
    /// reads the one-byte event register at `base` (the VMM clears it on read) and, when
    /// [`GED_EVENT_POWER_BUTTON`] is set, notifies the power button with 0x80 (pressed).
    Ged {
        /// Guest physical address of the event register (32-bit MMIO).
        base: u32,
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
            AcpiDevice::Ged { base, irq } => ged_aml(*base, *irq),
            AcpiDevice::Aml(b) => b.clone(),
        }
    }
}

/// The GED and the power button it notifies (see [`AcpiDevice::Ged`]).
fn ged_aml(base: u32, irq: u32) -> Vec<u8> {
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let crs = aml::ResourceTemplate::new(vec![&int]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemMemory,
        &base,
        &GED_REGISTER_LEN,
    );
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    // Method (_EVT, 1, Serialized) {
    //     Local0 = GDAT
    //     If (Local0 & GED_EVENT_POWER_BUTTON) { Notify (\_SB_.PWRB, 0x80) }
    // }
    let local0 = aml::Local(0);
    let gdat = aml::Path::new("GDAT");
    let read = aml::Store::new(&local0, &gdat);
    let power_bit = aml::And::new(&aml::ZERO, &local0, &GED_EVENT_POWER_BUTTON);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let pressed = aml::Notify::new(&pwrb, &0x80u8);
    let on_power = aml::If::new(&power_bit, vec![&pressed]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &on_power]);
    let ged = aml::Device::new(
        "_SB_.GED_".into(),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    );
    let button_hid = aml::EISAName::new("PNP0C0C");
    let button_hid = aml::Name::new("_HID".into(), &button_hid);
    let button_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let button = aml::Device::new("_SB_.PWRB".into(), vec![&button_hid, &button_uid]);
    let mut bytes = bytes_of(&ged);
    bytes.extend_from_slice(&bytes_of(&button));
    bytes
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
    fn ged_and_power_button_are_in_the_dsdt() {
        let base = dsdt(&[]);
        let d = dsdt(&[AcpiDevice::Ged {
            base: 0xd000_2000,
            irq: 7,
        }]);
        assert_eq!(sum(&d), 0);
        assert_eq!(le32(&d, 4) as usize, d.len());
        let body = &d[base.len()..];
        // Two DeviceOps (GED, then the button), each exactly as long as its PkgLength says.
        let mut at = 0;
        let mut names = Vec::new();
        while at < body.len() {
            assert_eq!(body[at..at + 2], [0x5b, 0x82], "DeviceOp at {at}");
            let lead = body[at + 2];
            let extra = usize::from(lead >> 6);
            let mut len = usize::from(lead & if extra == 0 { 0x3f } else { 0x0f });
            for i in 0..extra {
                len |= usize::from(body[at + 3 + i]) << (4 + 8 * i);
            }
            // DualNamePrefix "_SB_" + the device's own name.
            assert_eq!(body[at + 3 + extra], 0x2e);
            names.push(body[at + 8 + extra..at + 12 + extra].to_vec());
            at += 2 + len;
        }
        assert_eq!(at, body.len(), "the devices fill the DSDT exactly");
        assert_eq!(names, [b"GED_".to_vec(), b"PWRB".to_vec()]);
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"ACPI0013\0"));
        assert!(has(b"_EVT"));
        // Extended IRQ descriptor: consumer, edge, active high, exclusive; GSI 7.
        assert!(has(&[0x89, 6, 0, 0b11, 1, 7, 0, 0, 0]));
        // OperationRegion (GDST, SystemMemory, 0xd0002000, One)
        assert!(has(&[
            0x5b, 0x80, b'G', b'D', b'S', b'T', 0, 0x0c, 0, 0x20, 0, 0xd0, 1
        ]));
        // Notify (\_SB_.PWRB, 0x80)
        assert!(has(&[
            0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0a, 0x80
        ]));
        // EisaId ("PNP0C0C")
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
        // Method (_EVT, 1, Serialized) { Store (GDAT, Local0)
        //     If (And (Local0, 0x08, Zero)) { Notify (\_SB_.PWRB, 0x80) } }
        #[rustfmt::skip]
        let evt = [
            0x14, 0x20, b'_', b'E', b'V', b'T', 0x09,
            0x70, b'G', b'D', b'A', b'T', 0x60,
            0xa0, 0x13, 0x7b, 0x60, 0x0a, GED_EVENT_POWER_BUTTON, 0x00,
            0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0a, 0x80,
        ];
        assert!(has(&evt));
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
