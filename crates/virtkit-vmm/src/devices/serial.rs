//! COM1: vm-superio's 16550A on the I/O bus, its interrupt through an irqfd, and a
//! watchdog that sends an interrupt the guest never acknowledged again.
//!
//! vm-superio raises the interrupt as one edge when a condition arises (a byte written, so
//! the transmitter is empty again; a byte received) and sets its bit in IIR; while that
//! bit stays set, later conditions raise no new edge, and only the guest's read of IIR
//! clears it. So a single edge lost on its way (nested virtualization has been seen to
//! lose one: the Debian guest's output stopped for good after exactly one 16-byte FIFO
//! load) leaves the port silent forever: Linux's 8250 driver waits for the transmitter
//! interrupt and never polls. [`SerialPort::resend_unacknowledged`], called by the event
//! loop every [`RESEND_AFTER`], sends the interrupt again when one was pending and enabled
//! on two ticks in a row with no IIR read in between. A guest that reads IIR as it should
//! never sees it; a lost edge costs a pause of at most twice that.

use std::io::Write;
use std::time::Duration;

use virtkit_memory::Irq;
use virtkit_vcpu::{BusDevice, EventFd};
use virtkit_virtio::watchdog::InterruptWatchdog;
use vm_superio::{Serial, Trigger};

/// COM1's I/O base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ line.
pub const COM1_IRQ: Irq = Irq(4);

/// How often the event loop looks for an unacknowledged interrupt.
pub const RESEND_AFTER: Duration = Duration::from_millis(250);

/// The registers, as offsets from [`COM1_PORT`], and bits the watchdog reads.
const IIR_OFFSET: u64 = 2;
const IIR_NONE: u8 = 0x01;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IER_RDA: u8 = 0x01;
const IER_THR_EMPTY: u8 = 0x02;

/// An `EventFd` as a vm-superio interrupt trigger.
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
pub struct SerialPort {
    dev: SerialDevice,
    /// An output error was logged (later ones are dropped silently).
    output_failed: bool,
    /// IIR reads (the guest acknowledging) against ticks.
    watchdog: InterruptWatchdog,
}

impl std::fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort")
            .field("watchdog", &self.watchdog)
            .finish_non_exhaustive()
    }
}

impl SerialPort {
    /// A port; output errors are logged once, then the output is dropped.
    pub fn new(dev: SerialDevice) -> Self {
        SerialPort {
            dev,
            output_failed: false,
            watchdog: InterruptWatchdog::new(),
        }
    }

    /// The 16550A.
    pub fn device(&self) -> &SerialDevice {
        &self.dev
    }

    /// The 16550A, to feed input or restore.
    pub fn device_mut(&mut self) -> &mut SerialDevice {
        &mut self.dev
    }

    /// How many interrupts the watchdog sent again.
    pub fn resent(&self) -> u64 {
        self.watchdog.resent()
    }

    /// One watchdog tick: sends the interrupt again when one was pending and enabled at
    /// the previous tick too and the guest has not read IIR since. Returns whether it did.
    pub fn resend_unacknowledged(&mut self) -> bool {
        let st = self.dev.state();
        let iir = st.interrupt_identification;
        let ier = st.interrupt_enable;
        let pending = iir & IIR_NONE == 0
            && ((iir & IIR_THR_EMPTY != 0 && ier & IER_THR_EMPTY != 0)
                || (iir & IIR_RDA != 0 && ier & IER_RDA != 0));
        if !self.watchdog.tick(pending) {
            return false;
        }
        // The device's own trigger: the eventfd registered as the irqfd.
        if let Err(e) = self.dev.interrupt_evt().trigger() {
            log::warn!("serial: sending the interrupt again: {e}");
            return false;
        }
        log::log!(
            self.watchdog.log_level(),
            "serial: interrupt (IIR {iir:#04x}, IER {ier:#04x}) not acknowledged for {:?}: sent again ({} so far)",
            RESEND_AFTER,
            self.watchdog.resent()
        );
        true
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            if offset == IIR_OFFSET {
                self.watchdog.ack();
            }
            *b = self.dev.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.dev.write(offset as u8, *b) {
                if !self.output_failed {
                    log::warn!("serial output failed, dropping further output errors: {e:?}");
                    self.output_failed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IER: u64 = 1;
    const THR: u64 = 0;

    fn port() -> (SerialPort, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = Serial::new(
            EventTrigger(evt.try_clone().unwrap()),
            Box::new(std::io::sink()) as SerialOut,
        );
        (SerialPort::new(dev), evt)
    }

    /// How many edges the guest would have received since the last call.
    fn edges(evt: &EventFd) -> u64 {
        evt.read().unwrap_or(0)
    }

    #[test]
    fn a_lost_transmitter_interrupt_is_sent_again() {
        let (mut p, evt) = port();
        p.write(IER, &[IER_THR_EMPTY]);
        let mut iir = [0u8];
        p.read(IIR_OFFSET, &mut iir); // the guest takes the first interrupt
        edges(&evt);
        p.write(THR, b"x");
        assert_eq!(edges(&evt), 1, "the byte's transmitter-empty interrupt");
        // That edge is lost: nothing reads IIR. A second byte raises no new edge.
        p.write(THR, b"y");
        assert_eq!(edges(&evt), 0);
        assert!(!p.resend_unacknowledged(), "first tick: only noted");
        assert!(p.resend_unacknowledged(), "second tick: sent again");
        assert_eq!(edges(&evt), 1);
        assert_eq!(p.resent(), 1);
        // The guest takes it now: IIR says THRE, then nothing is pending.
        p.read(IIR_OFFSET, &mut iir);
        assert_eq!(iir[0] & 0x0f, IIR_THR_EMPTY);
        assert!(!p.resend_unacknowledged());
        assert!(!p.resend_unacknowledged());
        assert_eq!(edges(&evt), 0);
    }

    #[test]
    fn an_acknowledged_or_disabled_interrupt_is_never_sent_again() {
        let (mut p, evt) = port();
        p.write(IER, &[IER_THR_EMPTY]);
        let mut iir = [0u8];
        for _ in 0..10 {
            // A guest that reads IIR between ticks, with an interrupt pending at each.
            p.write(THR, b"x");
            assert!(!p.resend_unacknowledged());
            p.read(IIR_OFFSET, &mut iir);
            p.write(THR, b"x");
        }
        // Pending but disabled by the guest since: not sent.
        p.write(IER, &[0]);
        assert!(!p.resend_unacknowledged());
        assert!(!p.resend_unacknowledged());
        assert_eq!(p.resent(), 0);
        edges(&evt);
    }
}
