//! The device on an event-manager loop: the control event that follows
//! activation and reset, the two queue notifications, and the backend,
//! polled for input unless receive is stalled and for output while
//! transmit waits.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;
use super::device::Net;

const EV_CTL: u32 = 0;
const EV_RX_QUEUE: u32 = 1;
const EV_TX_QUEUE: u32 = 2;
const EV_BACKEND: u32 = 3;

/// The fds this device has in the event loop.
#[derive(Debug)]
pub(super) struct Registered {
    rx_evt: EventFd,
    tx_evt: EventFd,
    backend: EventSet,
}

impl<B: NetBackend> Net<B> {
    /// Bring the event-loop registrations in line with the device state.
    fn reconcile(&mut self, ops: &mut EventOps<'_>) {
        if let Some(r) = self.registered.take() {
            for (fd, data) in [(&r.rx_evt, EV_RX_QUEUE), (&r.tx_evt, EV_TX_QUEUE)] {
                if let Err(e) = ops.remove(Events::with_data(fd, data, EventSet::IN)) {
                    warn!("virtio-net: unregistering a queue event: {e}");
                }
            }
            if !r.backend.is_empty() {
                if let Err(e) = ops.remove(Events::with_data(&self.backend, EV_BACKEND, r.backend))
                {
                    warn!("virtio-net: unregistering the backend: {e}");
                }
            }
        }
        let Some(a) = self.active.as_ref() else {
            return;
        };
        let clone = |e: &EventFd| e.try_clone();
        let (rx_evt, tx_evt) = match (clone(&a.rx_evt), clone(&a.tx_evt)) {
            (Ok(r), Ok(t)) => (r, t),
            (Err(e), _) | (_, Err(e)) => {
                error!("virtio-net: cloning queue events: {e}");
                return;
            }
        };
        for (fd, data) in [(&rx_evt, EV_RX_QUEUE), (&tx_evt, EV_TX_QUEUE)] {
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                error!("virtio-net: registering a queue event: {e}");
            }
        }
        self.registered = Some(Registered {
            rx_evt,
            tx_evt,
            backend: EventSet::empty(),
        });
        // The driver may have queued buffers before the loop saw the
        // activation.
        self.process_tx();
        self.process_rx();
        self.update_backend_interest(ops);
    }

    /// Poll the backend for input unless receive is stalled, and for output
    /// while transmit waits for it.
    fn update_backend_interest(&mut self, ops: &mut EventOps<'_>) {
        let Some(r) = self.registered.as_mut() else {
            return;
        };
        let mut want = EventSet::empty();
        let active = self.active.is_some();
        if active && !self.rx_stalled && !self.backend_failed {
            want |= EventSet::IN;
        }
        if active && self.tx_stalled {
            want |= EventSet::OUT;
        }
        if want == r.backend {
            return;
        }
        let ev = Events::with_data(&self.backend, EV_BACKEND, want);
        let res = if r.backend.is_empty() {
            ops.add(ev)
        } else if want.is_empty() {
            ops.remove(Events::with_data(&self.backend, EV_BACKEND, r.backend))
        } else {
            ops.modify(ev)
        };
        match res {
            Ok(()) => r.backend = want,
            Err(e) => error!("virtio-net: updating backend polling: {e}"),
        }
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        if let Err(e) = ops.add(Events::with_data(&self.ctl_evt, EV_CTL, EventSet::IN)) {
            error!("virtio-net: registering the control event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        match events.data() {
            EV_CTL => {
                let _ = self.ctl_evt.read();
                self.reconcile(ops);
                return;
            }
            EV_RX_QUEUE => {
                if let Some(r) = &self.registered {
                    let _ = r.rx_evt.read();
                }
                self.process_rx();
            }
            EV_TX_QUEUE => {
                if let Some(r) = &self.registered {
                    let _ = r.tx_evt.read();
                }
                self.process_tx();
                // Transmitting may have freed nothing for RX, but a guest
                // that kicks TX often also refilled RX.
                if self.rx_stalled {
                    self.process_rx();
                }
            }
            EV_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) {
                    self.tx_stalled = false;
                    self.process_tx();
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.process_rx();
                }
            }
            other => warn!("virtio-net: unexpected event data {other}"),
        }
        self.update_backend_interest(ops);
    }
}
