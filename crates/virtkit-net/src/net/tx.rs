//! The transmit queue: each chain gathered into guest-memory iovecs and
//! written to the backend in one `writev`, with back-pressure when the
//! backend is full.

use std::io;

use log::{debug, error};

use virtkit_virtio::InterruptReason;

use super::backend::NetBackend;
use super::device::{Active, Net};
use super::{log_guest_error, Malformed, BATCH, MAX_TX_LEN, TX_QUEUE};
use crate::tap::VNET_HDR_LEN;

impl<B: NetBackend> Net<B> {
    /// Move frames from the guest's transmit queue to the backend now.
    /// Returns the number of frames sent. The event loop calls this on
    /// queue notifications; VMMs with their own loop may call it directly.
    pub fn process_tx(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut sent = 0;
        let mut used_any = false;
        'outer: loop {
            a.tx.disable_notification(&a.mem);
            while let Some(chain) = a.tx.pop(&a.mem) {
                let head = chain.head_index();
                a.tx_iov.clear();
                let mut result = Ok(0usize);
                for d in chain {
                    result = result.and_then(|total| {
                        if d.is_write_only() {
                            return Err(Malformed::WrongDirection);
                        }
                        let total = total + d.len() as usize;
                        if total > MAX_TX_LEN {
                            return Err(Malformed::TooLong);
                        }
                        a.tx_iov.push(d.addr(), d.len())?;
                        Ok(total)
                    });
                    if result.is_err() {
                        break;
                    }
                }
                let total = result.and_then(|t| {
                    if t < VNET_HDR_LEN {
                        Err(Malformed::TooShort)
                    } else {
                        Ok(t)
                    }
                });
                match total {
                    Err(why) => {
                        self.stats.tx_malformed += 1;
                        log_guest_error(
                            self.stats.tx_malformed,
                            format_args!("dropping malformed tx chain {head}: {why}"),
                        );
                    }
                    Ok(total) => match self.backend.write_frame(a.tx_iov.as_slice()) {
                        Ok(_) => {
                            self.stats.tx_frames += 1;
                            self.stats.tx_bytes += total as u64;
                            sent += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Leave the chain in the ring and wait for the
                            // backend to drain.
                            a.tx.undo_pop();
                            self.tx_stalled = true;
                            self.stats.tx_stalls += 1;
                            break 'outer;
                        }
                        Err(e) => {
                            self.stats.tx_dropped += 1;
                            debug!("virtio-net: backend refused a frame: {e}");
                        }
                    },
                }
                if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
                    error!("virtio-net: tx add_used: {e}");
                    break 'outer;
                }
                used_any = true;
                if sent >= BATCH {
                    // Let other events run; the notification fd was not
                    // consumed for these chains, so come back soon.
                    break 'outer;
                }
            }
            // Chains published between the last pop and re-enabling
            // notifications come without a kick: take them now. `rearm`
            // says so only for valid pending chains, so this cannot spin on
            // a bogus avail index (the queue then faults and waits for a
            // reset).
            if !a.tx.rearm(&a.mem) {
                break;
            }
        }
        if sent >= BATCH {
            // More may be waiting: re-arm ourselves through the queue event.
            let _ = a.tx_evt.write(1);
        }
        if used_any {
            signal_tx_used(a);
        }
        sent
    }
}

/// Interrupt the driver for new transmit used entries if it wants one.
fn signal_tx_used(a: &mut Active) {
    if a.tx.needs_notification(&a.mem) {
        if let Err(e) = a.interrupt.signal(InterruptReason::Queue(TX_QUEUE as u16)) {
            error!("virtio-net: interrupt: {e}");
        }
    }
}
