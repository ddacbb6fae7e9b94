//! The legacy PC devices: the i8042 reset line and the hardware-reduced ACPI sleep
//! and reset ports, and [`ExitNotifier`], through which a device ends the VM.

use std::sync::{Arc, Mutex};

use virtkit_boot::layout::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_VALUE};
use virtkit_vcpu::{BusDevice, EventFd};
use vm_superio::{I8042Device, Trigger};

/// The i8042 controller's ports: 0x60..=0x64.
pub const I8042_PORT: u16 = 0x60;

/// Why the VM ended, as reported by a device (or asked for by the VMM's user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5.
    PowerOff,
    /// i8042 or ACPI reset.
    Reboot,
    /// The VMM was asked to shut the VM down ([`crate::VmController::shutdown`]).
    Shutdown,
    /// The VM moved to another VMM ([`crate::VmController::send_migration`]).
    Migrated,
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

/// Wraps the i8042 reset-only controller; a reset (0xFE to port 0x64) ends the VM.
pub(crate) struct I8042(pub(crate) I8042Device<ExitTrigger>);

pub(crate) struct ExitTrigger(pub(crate) ExitNotifier, pub(crate) GuestExit);

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
pub(crate) struct AcpiPorts {
    pub(crate) exit: ExitNotifier,
    pub(crate) reset: bool,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
