//! Putting virtio devices on the virtio-mmio transport: a window and an IRQ line
//! from the allocator, queue notifications as ioeventfds, the interrupt as an irqfd.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use event_manager::MutEventSubscriber;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use virtkit_boot::acpi::AcpiDevice;
use virtkit_vcpu::{BusDevice, Vm};
use virtkit_virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use virtkit_virtio::VirtioDevice;

use crate::devices::DeviceManager;

/// A device as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The virtio devices made so far: what the event loop runs, and what the DSDT
/// describes to the guest.
#[derive(Default)]
pub struct VirtioDevices {
    /// Devices for the event loop.
    pub subscribers: Vec<Subscriber>,
    /// Their ACPI descriptions (`LNRO0005` windows with their GSIs).
    pub acpi: Vec<AcpiDevice>,
}

/// The bus side of one virtio-mmio window. The transport is filled in once the
/// window's interrupt line is known, before any vCPU runs.
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

/// Puts `device` on the MMIO bus behind a virtio-mmio transport, describes it in
/// the DSDT (hardware-reduced ACPI has no legacy IRQs, so a command-line
/// `virtio_mmio.device=` entry would get no usable interrupt), and hands it to
/// the event loop.
pub fn attach_virtio<D: VirtioDevice + MutEventSubscriber + Send + 'static>(
    vm: &Vm,
    devices: &mut DeviceManager,
    mem: &GuestMemoryMmap,
    device: Arc<Mutex<D>>,
    out: &mut VirtioDevices,
) -> Result<()> {
    let slot = Arc::new(Mutex::new(VirtioSlot(None)));
    let (range, irq, irq_evt) =
        devices.add_mmio_device(vm, slot.clone(), MMIO_WINDOW_SIZE, false)?;
    let base = u32::try_from(range.start.0)
        .context("virtio-mmio windows must lie below 4 GiB for the DSDT")?;
    let transport = MmioTransport::new(device.clone(), mem.clone(), irq_evt)
        .context("creating the virtio-mmio transport")?;
    for (q, evt) in transport.queue_events().iter().enumerate() {
        vm.register_mmio_ioeventfd(
            evt,
            GuestAddress(range.start.0 + QUEUE_NOTIFY_OFFSET),
            Some(q as u32),
        )
        .context("registering a queue ioeventfd")?;
    }
    slot.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(transport);
    out.acpi.push(AcpiDevice::VirtioMmio {
        uid: u16::try_from(out.acpi.len()).context("too many virtio devices")?,
        base,
        len: MMIO_WINDOW_SIZE as u32,
        irq: irq.0,
    });
    out.subscribers.push(device);
    Ok(())
}
