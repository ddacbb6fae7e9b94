//! Devices and their registration: legacy PC devices (COM1, i8042 reset, ACPI sleep/reset ports)
//! and a hook for virtio-mmio devices.
//!
//! To add an MMIO device: [`DeviceManager::add_mmio_device`] with a [`BusDevice`] and its window
//! size. It allocates an MMIO window and an IRQ line, wires an irqfd for the line (write the
//! returned `EventFd` to interrupt the guest), puts the device on the MMIO bus, and for virtio
//! devices appends `virtio_mmio.device=<size>@<base>:<irq>` to the kernel command line.
//! Queue notifications can skip the vCPU exit with [`Vm::register_mmio_ioeventfd`].

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use virtkit_boot::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_VALUE, ACPI_SLEEP_CONTROL_PORT,
};
use virtkit_memory::{DeviceAllocator, Irq, MmioRange};
use virtkit_vcpu::{BusDevice, Buses, EventFd, SharedDevice, Vm};
use vm_superio::{I8042Device, Serial, Trigger};

/// COM1's I/O base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ line.
pub const COM1_IRQ: Irq = Irq(4);
/// The i8042 controller's ports: 0x60..=0x64.
pub const I8042_PORT: u16 = 0x60;

/// Why the VM ended, as reported by a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5.
    PowerOff,
    /// i8042 or ACPI reset.
    Reboot,
}

/// Where devices report that the guest asked to end the VM.
#[derive(Debug, Clone)]
pub struct ExitNotifier {
    reason: Arc<Mutex<Option<GuestExit>>>,
    evt: Arc<EventFd>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ExitNotifier {
    /// A notifier signalling `evt`.
    pub fn new(evt: EventFd) -> Self {
        ExitNotifier {
            reason: Arc::new(Mutex::new(None)),
            evt: Arc::new(evt),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Set once the guest ends the VM; vCPU threads check it after every exit so the
    /// guest does not run on after powering off.
    pub fn stop_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.stop.clone()
    }

    /// Records the first exit reason and wakes the event loop.
    pub fn notify(&self, why: GuestExit) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(why);
        }
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal VM exit: {e}");
        }
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<GuestExit> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An `EventFd` as a vm-superio interrupt/reset trigger.
#[derive(Debug)]
pub struct EventTrigger(pub EventFd);

impl Trigger for EventTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port's output.
pub type SerialOut = Box<dyn Write + Send>;
/// COM1.
pub type SerialDevice = Serial<EventTrigger, vm_superio::serial::NoEvents, SerialOut>;

/// COM1 on the bus.
pub struct SerialPort(pub SerialDevice, pub bool);

impl SerialPort {
    /// A port; output errors are logged once, then the output is dropped.
    pub fn new(dev: SerialDevice) -> Self {
        SerialPort(dev, false)
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.0.write(offset as u8, *b) {
                if !self.1 {
                    log::warn!("serial output failed, dropping further output errors: {e:?}");
                    self.1 = true;
                }
            }
        }
    }
}

/// Wraps the i8042 reset-only controller; a reset (0xFE to port 0x64) ends the VM.
struct I8042(I8042Device<ExitTrigger>);

struct ExitTrigger(ExitNotifier, GuestExit);

impl Trigger for ExitTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.notify(self.1);
        Ok(())
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            let _ = self.0.write(offset as u8, *b);
        }
    }
}

/// The hardware-reduced ACPI sleep control and reset registers the FADT names.
struct AcpiPorts {
    exit: ExitNotifier,
    reset: bool,
}

impl BusDevice for AcpiPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if self.reset {
            if v == ACPI_RESET_VALUE {
                self.exit.notify(GuestExit::Reboot);
            }
        } else if v == ACPI_S5_SLEEP_VALUE {
            self.exit.notify(GuestExit::PowerOff);
        }
    }
}

/// Owns the buses while the VM is being built.
pub struct DeviceManager {
    /// The buses handed to the vCPUs.
    pub buses: Buses,
    #[allow(dead_code)] // used by add_mmio_device
    allocator: DeviceAllocator,
    cmdline_extra: Vec<String>,
    /// COM1, shared with the console input handler.
    pub serial: Option<Arc<Mutex<SerialPort>>>,
}

impl DeviceManager {
    /// An empty device set.
    pub fn new() -> Self {
        DeviceManager {
            buses: Buses::default(),
            allocator: DeviceAllocator::new(),
            cmdline_extra: Vec::new(),
            serial: None,
        }
    }

    /// COM1 at 0x3f8 with its interrupt on GSI 4 through an irqfd.
    pub fn add_serial(&mut self, vm: &Vm, out: SerialOut) -> Result<()> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).context("creating the serial irqfd")?;
        vm.register_irqfd(&evt, COM1_IRQ)
            .context("registering the serial irqfd")?;
        let port = Arc::new(Mutex::new(SerialPort::new(Serial::new(
            EventTrigger(evt),
            out,
        ))));
        self.buses
            .pio
            .insert(port.clone(), u64::from(COM1_PORT), 8)
            .context("placing COM1")?;
        self.serial = Some(port);
        Ok(())
    }

    /// The i8042 reset line and the ACPI sleep/reset ports, all ending the VM through `exit`.
    pub fn add_power_devices(&mut self, exit: &ExitNotifier) -> Result<()> {
        let i8042 = I8042(I8042Device::new(ExitTrigger(
            exit.clone(),
            GuestExit::Reboot,
        )));
        self.buses
            .pio
            .insert(Arc::new(Mutex::new(i8042)), u64::from(I8042_PORT), 5)
            .context("placing the i8042")?;
        for (port, reset) in [(ACPI_SLEEP_CONTROL_PORT, false), (ACPI_RESET_PORT, true)] {
            let dev = AcpiPorts {
                exit: exit.clone(),
                reset,
            };
            self.buses
                .pio
                .insert(Arc::new(Mutex::new(dev)), u64::from(port), 1)
                .context("placing the ACPI ports")?;
        }
        Ok(())
    }

    /// Adds an MMIO device of `len` bytes with an IRQ line; returns its window, its line and the
    /// irqfd that raises the line. With `virtio`, the kernel learns of it from the command line.
    #[allow(dead_code)] // for the virtio devices (--disk, --net)
    pub fn add_mmio_device(
        &mut self,
        vm: &Vm,
        device: SharedDevice,
        len: u64,
        virtio: bool,
    ) -> Result<(MmioRange, Irq, EventFd)> {
        let range = self.allocator.allocate_mmio(len)?;
        let irq = self.allocator.allocate_irq()?;
        let evt = EventFd::new(libc::EFD_NONBLOCK).context("creating a device irqfd")?;
        vm.register_irqfd(&evt, irq)
            .context("registering a device irqfd")?;
        self.buses
            .mmio
            .insert(device, range.start.0, range.len)
            .context("placing an MMIO device")?;
        if virtio {
            self.cmdline_extra.push(format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                range.len / 1024,
                range.start.0,
                irq.0
            ));
        }
        Ok((range, irq, evt))
    }

    /// Command line additions for the devices.
    pub fn cmdline_extra(&self) -> &[String] {
        &self.cmdline_extra
    }
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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

    #[test]
    fn kvm_mmio_device_registration() {
        let vm = Vm::new(virtkit_vcpu::VmConfig::default()).unwrap();
        let mut dm = DeviceManager::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (range, irq, evt) = dm
            .add_mmio_device(&vm, Arc::new(Mutex::new(Scratch(log.clone()))), 0x200, true)
            .unwrap();
        assert_eq!(range.start.0, 0xd000_0000);
        assert_eq!(range.len, 0x1000);
        assert_eq!(irq, Irq(5));
        assert_eq!(dm.cmdline_extra(), ["virtio_mmio.device=4K@0xd0000000:5"]);
        evt.write(1).unwrap();
        assert!(dm.buses.mmio.write(0xd000_0050, &[1, 0, 0, 0]));
        assert_eq!(*log.lock().unwrap(), vec![(0x50, vec![1, 0, 0, 0])]);
        let (r2, irq2, _) = dm
            .add_mmio_device(&vm, Arc::new(Mutex::new(Scratch(log))), 0x1000, false)
            .unwrap();
        assert_eq!((r2.start.0, irq2), (0xd000_1000, Irq(6)));
        assert_eq!(dm.cmdline_extra().len(), 1);
    }

    #[test]
    fn acpi_ports_decode_sleep_and_reset() {
        let exit = ExitNotifier::new(EventFd::new(0).unwrap());
        let mut sleep = AcpiPorts {
            exit: exit.clone(),
            reset: false,
        };
        sleep.write(0, &[5 << 2]); // SLP_TYP without SLP_EN
        assert_eq!(exit.reason(), None);
        sleep.write(0, &[ACPI_S5_SLEEP_VALUE]);
        assert_eq!(exit.reason(), Some(GuestExit::PowerOff));
        let exit2 = ExitNotifier::new(EventFd::new(0).unwrap());
        let mut i8042 = I8042(I8042Device::new(ExitTrigger(
            exit2.clone(),
            GuestExit::Reboot,
        )));
        i8042.write(4, &[0xaa]);
        assert_eq!(exit2.reason(), None);
        i8042.write(4, &[0xfe]);
        assert_eq!(exit2.reason(), Some(GuestExit::Reboot));
    }
}
