//! The ACPI Generic Event Device (GED): one event register on the MMIO bus and an interrupt
//! line, through which the VMM raises ACPI events in a hardware-reduced ACPI guest. The DSDT
//! entry ([`virtkit_boot::acpi::AcpiDevice::Ged`]) describes both; its `_EVT` method reads
//! the register (which clears it) and notifies the power button device when
//! [`GED_EVENT_POWER_BUTTON`] is set.

use std::sync::{Arc, Mutex, MutexGuard};

use virtkit_boot::acpi::GED_EVENT_POWER_BUTTON;
use virtkit_vcpu::{BusDevice, EventFd};

/// The register and the line that raises the GED's interrupt (filled in once the line is
/// known, before any vCPU runs).
#[derive(Debug, Default)]
pub(crate) struct GedState {
    pending: u8,
    irq: Option<EventFd>,
}

impl BusDevice for GedState {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = std::mem::take(&mut self.pending);
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// A handle on the VM's Generic Event Device, cheap to clone: it raises ACPI events.
#[derive(Debug, Clone)]
pub struct Ged(pub(crate) Arc<Mutex<GedState>>);

impl Ged {
    pub(crate) fn new() -> Self {
        Ged(Arc::new(Mutex::new(GedState::default())))
    }

    fn lock(&self) -> MutexGuard<'_, GedState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_irq(&self, irq: EventFd) {
        self.lock().irq = Some(irq);
    }

    /// Presses the power button: sets its event bit and raises the GED's interrupt; the
    /// guest's ACPI button driver then sees a power-button press (Linux reports `KEY_POWER`,
    /// and systemd-logind or acpid usually powers off).
    pub fn power_button(&self) -> std::io::Result<()> {
        self.raise(GED_EVENT_POWER_BUTTON)
    }

    fn raise(&self, event: u8) -> std::io::Result<()> {
        let mut st = self.lock();
        st.pending |= event;
        match &st.irq {
            Some(irq) => irq.write(1),
            None => Err(std::io::Error::other("the GED has no interrupt line yet")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_reads_pending_events_once() {
        let ged = Ged::new();
        assert!(ged.power_button().is_err(), "no line yet");
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        ged.set_irq(evt.try_clone().unwrap());
        ged.power_button().unwrap();
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0xffu8; 1];
        ged.0.lock().unwrap().read(0, &mut b);
        assert_eq!(b[0], GED_EVENT_POWER_BUTTON);
        ged.0.lock().unwrap().read(0, &mut b);
        assert_eq!(b[0], 0, "reading clears the register");
        ged.0.lock().unwrap().read(4, &mut b);
        assert_eq!(b[0], 0);
    }
}
