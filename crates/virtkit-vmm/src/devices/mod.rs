//! The device manager: the buses the vCPUs dispatch to, the legacy PC devices, and
//! virtio-mmio slots, each with its MMIO window, interrupt line (GSI) and irqfd, its queue
//! ioeventfds and its DSDT entry.
//!
//! Adding a virtio device is one call: [`DeviceManager::add_virtio`]. For any other MMIO
//! device, [`DeviceManager::add_mmio_device`] gives a window, a line and the irqfd that
//! raises it. [`DeviceManager::add_ged`] adds the ACPI Generic Event Device that presses the
//! guest's power button.

mod disk;
pub mod ged;
pub mod legacy;
pub mod serial;

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use virtkit_boot::acpi::{AcpiDevice, GED_REGISTER_LEN};
use virtkit_boot::layout::{ACPI_RESET_PORT, ACPI_SLEEP_CONTROL_PORT};
use virtkit_memory::{DeviceAllocator, GuestAddress, Irq, MmioRange};
use virtkit_vcpu::{BusDevice, Buses, EventFd, SharedDevice, Vm};
use virtkit_virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use virtkit_virtio::VirtioDevice;
use vm_memory::GuestMemoryMmap;
use vm_superio::{I8042Device, Serial};

pub use disk::open_disk;
pub use ged::Ged;
use legacy::{AcpiPorts, ExitTrigger, I8042};
pub use legacy::{ExitNotifier, GuestExit, I8042_PORT};
use serial::EventTrigger;
pub use serial::{SerialOut, SerialPort, COM1_IRQ, COM1_PORT};

/// Errors while adding devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be made.
    #[error("cannot create an eventfd for {0}: {1}")]
    EventFd(&'static str, std::io::Error),
    /// The hypervisor refused a registration.
    #[error("{0}: {1}")]
    Vm(&'static str, virtkit_vcpu::VmError),
    /// Two devices overlap on a bus.
    #[error("placing {0}: {1}")]
    Bus(&'static str, virtkit_vcpu::BusError),
    /// No MMIO window or interrupt line is left.
    #[error("allocating resources: {0}")]
    Allocate(#[from] virtkit_memory::AllocatorError),
    /// The virtio transport refused the device.
    #[error("virtio-mmio transport: {0}")]
    Transport(String),
    /// A window above 4 GiB (the DSDT describes 32-bit windows).
    #[error("MMIO windows must lie below 4 GiB for the DSDT")]
    WindowAbove4G,
    /// Too many virtio devices.
    #[error("too many virtio devices")]
    TooMany,
    /// A disk could not be opened or its device made.
    #[error("disk {path}: {why}")]
    Disk {
        /// The image.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// A network interface could not be made.
    #[error("net tap={tap}: {why}")]
    Net {
        /// The tap.
        tap: String,
        /// What went wrong.
        why: String,
    },
}

/// A device as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The bus side of one virtio-mmio window. The transport is filled in once the window's
/// interrupt line is known, before any vCPU runs.
struct VirtioSlot(Option<MmioTransport>);

impl BusDevice for VirtioSlot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match &mut self.0 {
            Some(t) => t.read(offset, data),
            None => data.fill(0),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(t) = &mut self.0 {
            t.write(offset, data);
        }
    }
}

/// The virtio-mmio transports of a VM, in device order.
#[derive(Clone)]
pub struct VirtioSlots(Vec<Arc<Mutex<VirtioSlot>>>);

impl std::fmt::Debug for VirtioSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VirtioSlots({})", self.0.len())
    }
}

impl VirtioSlots {
    /// One interrupt-watchdog tick over every transport
    /// ([`MmioTransport::resend_unacknowledged`]).
    pub fn resend_unacknowledged(&self) {
        for s in &self.0 {
            if let Some(t) = lock_slot(s).0.as_mut() {
                t.resend_unacknowledged();
            }
        }
    }

    /// Each transport's state (with its device's live queues).
    pub fn save(&self) -> Vec<virtkit_virtio::mmio::MmioState> {
        self.0
            .iter()
            .filter_map(|s| lock_slot(s).0.as_ref().map(MmioTransport::save_state))
            .collect()
    }
}

/// Owns the buses and the devices while the VM is being built.
pub struct DeviceManager {
    vm: Arc<dyn Vm>,
    mem: GuestMemoryMmap,
    buses: Buses,
    allocator: DeviceAllocator,
    cmdline_extra: Vec<String>,
    acpi: Vec<AcpiDevice>,
    subscribers: Vec<Subscriber>,
    serial: Option<Arc<Mutex<SerialPort>>>,
    ged: Option<Ged>,
    virtio_count: u16,
    virtio_slots: Vec<Arc<Mutex<VirtioSlot>>>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("buses", &self.buses)
            .field("acpi", &self.acpi)
            .field("virtio_count", &self.virtio_count)
            .finish_non_exhaustive()
    }
}

impl DeviceManager {
    /// An empty device set for `vm`, whose guest memory is `mem`.
    pub fn new(vm: Arc<dyn Vm>, mem: GuestMemoryMmap) -> Self {
        DeviceManager {
            vm,
            mem,
            buses: Buses::default(),
            allocator: DeviceAllocator::new(),
            cmdline_extra: Vec::new(),
            acpi: Vec::new(),
            subscribers: Vec::new(),
            serial: None,
            ged: None,
            virtio_count: 0,
            virtio_slots: Vec::new(),
        }
    }

    /// COM1 at 0x3f8 with its interrupt on GSI 4 through an irqfd.
    pub fn add_serial(&mut self, out: SerialOut) -> Result<Arc<Mutex<SerialPort>>, DeviceError> {
        self.add_serial_with_state(out, None)
    }

    /// COM1 as [`DeviceManager::add_serial`], in a saved register state (a restore).
    pub fn add_serial_with_state(
        &mut self,
        out: SerialOut,
        state: Option<&vm_superio::serial::SerialState>,
    ) -> Result<Arc<Mutex<SerialPort>>, DeviceError> {
        let evt = eventfd("the serial irqfd")?;
        self.vm
            .register_irqfd(&evt, COM1_IRQ)
            .map_err(|e| DeviceError::Vm("registering the serial irqfd", e))?;
        let serial = match state {
            Some(st) => {
                Serial::from_state(st, EventTrigger(evt), vm_superio::serial::NoEvents, out)
                    .map_err(|e| DeviceError::Transport(format!("serial state: {e:?}")))?
            }
            None => Serial::new(EventTrigger(evt), out),
        };
        let port = Arc::new(Mutex::new(SerialPort::new(serial)));
        self.buses
            .pio
            .insert(port.clone(), u64::from(COM1_PORT), 8)
            .map_err(|e| DeviceError::Bus("COM1", e))?;
        self.acpi.push(AcpiDevice::Serial {
            uid: 0,
            port: COM1_PORT,
            irq: COM1_IRQ.0,
        });
        self.serial = Some(port.clone());
        Ok(port)
    }

    /// The i8042 reset line and the ACPI sleep/reset ports, all ending the VM through `exit`.
    pub fn add_power_devices(&mut self, exit: &ExitNotifier) -> Result<(), DeviceError> {
        let i8042 = I8042(I8042Device::new(ExitTrigger(
            exit.clone(),
            GuestExit::Reboot,
        )));
        self.buses
            .pio
            .insert(Arc::new(Mutex::new(i8042)), u64::from(I8042_PORT), 5)
            .map_err(|e| DeviceError::Bus("the i8042", e))?;
        for (port, reset) in [(ACPI_SLEEP_CONTROL_PORT, false), (ACPI_RESET_PORT, true)] {
            let dev = AcpiPorts {
                exit: exit.clone(),
                reset,
            };
            self.buses
                .pio
                .insert(Arc::new(Mutex::new(dev)), u64::from(port), 1)
                .map_err(|e| DeviceError::Bus("the ACPI ports", e))?;
        }
        Ok(())
    }

    /// Adds an MMIO device of `len` bytes with an interrupt line; returns its window, its
    /// line and the irqfd that raises the line. With `cmdline`, the kernel learns of it
    /// from a `virtio_mmio.device=` command-line entry.
    pub fn add_mmio_device(
        &mut self,
        device: SharedDevice,
        len: u64,
        cmdline: bool,
    ) -> Result<(MmioRange, Irq, EventFd), DeviceError> {
        let range = self.allocator.allocate_mmio(len)?;
        let irq = self.allocator.allocate_irq()?;
        let evt = eventfd("a device irqfd")?;
        self.vm
            .register_irqfd(&evt, irq)
            .map_err(|e| DeviceError::Vm("registering a device irqfd", e))?;
        self.buses
            .mmio
            .insert(device, range.start.0, range.len)
            .map_err(|e| DeviceError::Bus("an MMIO device", e))?;
        if cmdline {
            self.cmdline_extra.push(format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                range.len / 1024,
                range.start.0,
                irq.0
            ));
        }
        Ok((range, irq, evt))
    }

    /// Puts `device` on the MMIO bus behind a virtio-mmio transport, wires its queue
    /// notifications as ioeventfds and its interrupt as an irqfd, describes it in the DSDT
    /// (hardware-reduced ACPI has no legacy IRQs, so a command-line `virtio_mmio.device=`
    /// entry would get no usable interrupt), and hands it to the event loop.
    pub fn add_virtio<D>(&mut self, device: Arc<Mutex<D>>) -> Result<MmioRange, DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let uid = self.virtio_count;
        let next = uid.checked_add(1).ok_or(DeviceError::TooMany)?;
        let slot = Arc::new(Mutex::new(VirtioSlot(None)));
        self.virtio_slots.push(slot.clone());
        let (range, irq, irq_evt) = self.add_mmio_device(slot.clone(), MMIO_WINDOW_SIZE, false)?;
        let base = u32::try_from(range.start.0).map_err(|_| DeviceError::WindowAbove4G)?;
        let transport = MmioTransport::new(device.clone(), self.mem.clone(), irq_evt)
            .map_err(|e| DeviceError::Transport(e.to_string()))?;
        let notify = GuestAddress(range.start.0 + QUEUE_NOTIFY_OFFSET);
        for (q, evt) in transport.queue_events().iter().enumerate() {
            self.vm
                .register_mmio_ioeventfd(evt, notify, Some(q as u32))
                .map_err(|e| DeviceError::Vm("registering a queue ioeventfd", e))?;
        }
        slot.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(transport);
        self.acpi.push(AcpiDevice::VirtioMmio {
            uid,
            base,
            len: MMIO_WINDOW_SIZE as u32,
            irq: irq.0,
        });
        self.virtio_count = next;
        self.subscribers.push(device);
        Ok(range)
    }

    /// The ACPI Generic Event Device (`ACPI0013`) on its own MMIO window and line, with the
    /// power button it notifies, both described in the DSDT. Add it after the virtio devices
    /// so their windows and lines do not move.
    pub fn add_ged(&mut self) -> Result<Ged, DeviceError> {
        let ged = Ged::new();
        let (range, irq, evt) =
            self.add_mmio_device(ged.0.clone(), u64::from(GED_REGISTER_LEN), false)?;
        let base = u32::try_from(range.start.0).map_err(|_| DeviceError::WindowAbove4G)?;
        ged.set_irq(evt);
        self.acpi.push(AcpiDevice::Ged { base, irq: irq.0 });
        self.ged = Some(ged.clone());
        Ok(ged)
    }

    /// The Generic Event Device, when added.
    pub fn ged(&self) -> Option<&Ged> {
        self.ged.as_ref()
    }

    /// Adds a subscriber to the event loop (console input, a backend's own events).
    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.subscribers.push(s);
    }

    /// The buses for the vCPUs.
    pub fn buses(&self) -> &Buses {
        &self.buses
    }

    /// COM1, when added.
    pub fn serial(&self) -> Option<&Arc<Mutex<SerialPort>>> {
        self.serial.as_ref()
    }

    /// Command-line additions for the devices.
    pub fn cmdline_extra(&self) -> &[String] {
        &self.cmdline_extra
    }

    /// The devices' DSDT entries, in order.
    pub fn acpi_devices(&self) -> &[AcpiDevice] {
        &self.acpi
    }

    /// The state of every virtio-mmio transport (and its device's queues), in the order
    /// the devices were added.
    pub fn save_virtio(&self) -> Vec<virtkit_virtio::mmio::MmioState> {
        self.virtio_slots().save()
    }

    /// A handle on the virtio transports, for saving them from the event loop's thread.
    pub fn virtio_slots(&self) -> VirtioSlots {
        VirtioSlots(self.virtio_slots.clone())
    }

    /// Puts the virtio devices, added in the same order as when saved, back in a saved
    /// state (re-activating those that were active).
    pub fn restore_virtio(
        &self,
        states: &[virtkit_virtio::mmio::MmioState],
    ) -> Result<(), DeviceError> {
        if states.len() != self.virtio_slots.len() {
            return Err(DeviceError::Transport(format!(
                "the snapshot has {} virtio devices, this VM {}",
                states.len(),
                self.virtio_slots.len()
            )));
        }
        for (slot, st) in self.virtio_slots.iter().zip(states) {
            if let Some(t) = lock_slot(slot).0.as_mut() {
                t.restore_state(st)
                    .map_err(|e| DeviceError::Transport(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Hands the event-loop subscribers over (once).
    pub fn take_subscribers(&mut self) -> Vec<Subscriber> {
        std::mem::take(&mut self.subscribers)
    }
}

fn lock_slot(s: &Mutex<VirtioSlot>) -> std::sync::MutexGuard<'_, VirtioSlot> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn eventfd(what: &'static str) -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| DeviceError::EventFd(what, e))
}

#[cfg(test)]
mod tests;
