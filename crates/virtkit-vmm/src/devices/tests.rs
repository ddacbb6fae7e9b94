//! Device manager tests on the fake hypervisor: registration, address and GSI
//! allocation, irqfd and ioeventfd wiring, DSDT entries, exits routed to devices.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use virtkit_boot::acpi::AcpiDevice;
use virtkit_boot::layout::{ACPI_S5_SLEEP_VALUE, ACPI_SLEEP_CONTROL_PORT};
use virtkit_memory::{GuestMemoryBuilder, Irq};
use virtkit_vcpu::fake::{FakeHypervisor, FakeVm};
use virtkit_vcpu::{BusDevice, EventFd, Hypervisor};

use super::*;

type Log = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;
struct Scratch(Log);
impl BusDevice for Scratch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data.to_vec()));
    }
}

fn manager() -> (DeviceManager, Arc<FakeVm>) {
    let hv = FakeHypervisor::default();
    let vm = hv.create_vm().unwrap();
    let fake = hv.vms().pop().unwrap();
    let ram = GuestMemoryBuilder::from_mib(2).build().unwrap();
    (DeviceManager::new(vm, ram.memory().clone()), fake)
}

#[test]
fn mmio_devices_get_windows_lines_and_irqfds() {
    let (mut dm, vm) = manager();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (range, irq, evt) = dm
        .add_mmio_device(Arc::new(Mutex::new(Scratch(log.clone()))), 0x200, true)
        .unwrap();
    assert_eq!(
        (range.start.0, range.len, irq),
        (0xd000_0000, 0x1000, Irq(5))
    );
    assert_eq!(dm.cmdline_extra(), ["virtio_mmio.device=4K@0xd0000000:5"]);
    assert!(dm.buses().mmio.write(0xd000_0050, &[1, 0, 0, 0]));
    assert_eq!(*log.lock().unwrap(), vec![(0x50, vec![1, 0, 0, 0])]);
    // The irqfd handed back is the one the VM raises the line with.
    assert_eq!(vm.irqfds(), [Irq(5)]);
    evt.write(1).unwrap();
    assert_eq!(vm.irq_count(Irq(5)), 1);
    let (r2, irq2, _) = dm
        .add_mmio_device(Arc::new(Mutex::new(Scratch(log))), 0x1000, false)
        .unwrap();
    assert_eq!((r2.start.0, irq2), (0xd000_1000, Irq(6)));
    assert_eq!(dm.cmdline_extra().len(), 1);
}

#[test]
fn virtio_devices_are_one_call_each() {
    let (mut dm, vm) = manager();
    for i in 0..2u64 {
        let dev = virtkit_virtio::blk::Block::new(
            Arc::new(virtkit_block::mem::MemBackend::new(4096)),
            virtkit_virtio::blk::BlockOptions::default(),
        )
        .unwrap();
        let range = dm.add_virtio(Arc::new(Mutex::new(dev))).unwrap();
        assert_eq!(range.start.0, 0xd000_0000 + i * 0x1000);
    }
    // One queue each, notified through an ioeventfd at QueueNotify with its index.
    assert_eq!(
        vm.ioeventfds(),
        [
            (GuestAddress(0xd000_0050), Some(0)),
            (GuestAddress(0xd000_1050), Some(0))
        ]
    );
    assert_eq!(vm.irqfds(), [Irq(5), Irq(6)]);
    assert_eq!(
        dm.acpi_devices(),
        [
            AcpiDevice::VirtioMmio {
                uid: 0,
                base: 0xd000_0000,
                len: 0x1000,
                irq: 5
            },
            AcpiDevice::VirtioMmio {
                uid: 1,
                base: 0xd000_1000,
                len: 0x1000,
                irq: 6
            },
        ]
    );
    // The guest sees a virtio-mmio block device at the window: magic, version, device id.
    let mut b = [0u8; 4];
    assert!(dm.buses().mmio.read(0xd000_0000, &mut b));
    assert_eq!(&b, b"virt");
    assert!(dm.buses().mmio.read(0xd000_0008, &mut b));
    assert_eq!(u32::from_le_bytes(b), 2);
    assert_eq!(dm.take_subscribers().len(), 2);
    assert!(dm.take_subscribers().is_empty());
}

#[test]
fn serial_and_power_ports_are_routed() {
    let (mut dm, vm) = manager();
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    dm.add_serial(Box::new(Out(out.clone()))).unwrap();
    assert_eq!(vm.irqfds(), [COM1_IRQ]);
    assert!(matches!(
        dm.acpi_devices(),
        [AcpiDevice::Serial { port: 0x3f8, .. }]
    ));
    assert!(dm.buses().pio.write(u64::from(COM1_PORT), b"h"));
    assert_eq!(*out.lock().unwrap(), b"h");
    let exit = ExitNotifier::new(EventFd::new(0).unwrap());
    dm.add_power_devices(&exit).unwrap();
    assert!(dm
        .buses()
        .pio
        .write(u64::from(ACPI_SLEEP_CONTROL_PORT), &[ACPI_S5_SLEEP_VALUE]));
    assert_eq!(exit.reason(), Some(GuestExit::PowerOff));
    // A second COM1 overlaps the first: an error, not a panic.
    assert!(matches!(
        dm.add_serial(Box::new(std::io::sink())),
        Err(DeviceError::Bus("COM1", _))
    ));
}

#[test]
fn the_power_button_raises_the_ged_line_and_the_guest_reads_the_event() {
    let (mut dm, vm) = manager();
    dm.add_serial(Box::new(std::io::sink())).unwrap();
    let dev = virtkit_virtio::blk::Block::new(
        Arc::new(virtkit_block::mem::MemBackend::new(4096)),
        virtkit_virtio::blk::BlockOptions::default(),
    )
    .unwrap();
    dm.add_virtio(Arc::new(Mutex::new(dev))).unwrap();
    let ged = dm.add_ged().unwrap();
    // After the virtio device: its window and line did not move.
    assert_eq!(
        dm.acpi_devices()[2],
        AcpiDevice::Ged {
            base: 0xd000_1000,
            irq: 6
        }
    );
    assert!(dm.ged().is_some());
    assert_eq!(vm.irq_count(Irq(6)), 0);
    ged.power_button().unwrap();
    assert_eq!(vm.irq_count(Irq(6)), 1, "the press raises the GED's line");
    assert_eq!(vm.irq_count(Irq(5)), 0, "and no other");
    // The guest's _EVT reads the event register on the MMIO bus; reading clears it.
    let mut b = [0u8; 1];
    assert!(dm.buses().mmio.read(0xd000_1000, &mut b));
    assert_eq!(b[0], virtkit_boot::acpi::GED_EVENT_POWER_BUTTON);
    assert!(dm.buses().mmio.read(0xd000_1000, &mut b));
    assert_eq!(b[0], 0);
    // The DSDT the guest gets describes it.
    let dsdt = virtkit_boot::acpi::dsdt(dm.acpi_devices());
    assert!(dsdt.windows(9).any(|w| w == b"ACPI0013\0"));
}
