//! [`InterruptWatchdog`]: notices an interrupt the guest never acknowledged, so the device
//! can send it again.
//!
//! A device that raises its interrupt as an edge and then waits for the guest to
//! acknowledge it (virtio-mmio's InterruptACK; a 16550's IIR read) goes silent for good when
//! one edge is lost on its way: nothing raises another while the first stays pending. The
//! VMM ticks the watchdog every few hundred milliseconds; when an interrupt was pending at
//! two ticks in a row with no acknowledgement in between, the device sends it again. A
//! guest that acknowledges its interrupts never gets an extra one.

/// Tracks acknowledgements and pending interrupts across ticks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterruptWatchdog {
    /// Acknowledgements so far.
    acks: u64,
    /// `acks` at the last tick that found an interrupt pending.
    pending_at: Option<u64>,
    /// Interrupts sent again so far.
    resent: u64,
}

impl InterruptWatchdog {
    /// A watchdog that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The guest acknowledged an interrupt.
    pub fn ack(&mut self) {
        self.acks = self.acks.wrapping_add(1);
    }

    /// One tick, given whether an interrupt is pending now: whether to send it again
    /// (counted as sent; see [`InterruptWatchdog::resent`]).
    pub fn tick(&mut self, pending: bool) -> bool {
        if !pending {
            self.pending_at = None;
            return false;
        }
        if self.pending_at != Some(self.acks) {
            self.pending_at = Some(self.acks);
            return false;
        }
        self.resent += 1;
        true
    }

    /// How many interrupts were sent again.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// The level to log a resend at: the first is a warning (an edge went missing), the
    /// rest are debug.
    pub fn log_level(&self) -> log::Level {
        if self.resent <= 1 {
            log::Level::Warn
        } else {
            log::Level::Debug
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_only_what_stayed_unacknowledged_for_a_whole_tick() {
        let mut w = InterruptWatchdog::new();
        assert!(!w.tick(false));
        assert!(!w.tick(true), "pending for the first time: noted");
        assert!(w.tick(true), "still pending, no ack: resend");
        assert!(w.tick(true), "and again at each tick");
        w.ack();
        assert!(!w.tick(true), "acked since: a new interrupt, noted");
        w.ack();
        assert!(!w.tick(false));
        assert!(!w.tick(true));
        assert_eq!(w.resent(), 2);
    }
}
