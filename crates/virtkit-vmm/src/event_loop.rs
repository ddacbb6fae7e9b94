//! The event loop's own subscribers: console input into COM1, and the watcher that ends
//! the loop when a device or a vCPU thread ends the VM; and the raw terminal guard.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::terminal::Terminal;

use virtkit_vcpu::EventFd;

use crate::devices::SerialPort;

/// Console input: standard input into COM1's receive FIFO.
#[derive(Debug)]
pub(crate) struct ConsoleInput {
    pub(crate) serial: Arc<Mutex<SerialPort>>,
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            // /dev/null and regular files cannot be polled: no console input then.
            log::debug!("no console input: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        let room = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device()
            .fifo_capacity();
        if room == 0 {
            // The guest has not drained the FIFO yet: leave the input in stdin for now.
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        let n = if events.event_set().contains(EventSet::IN) {
            std::io::stdin().lock().read(&mut buf[..want]).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF or hang-up: stop watching.
            let _ = ops.remove(events);
            return;
        }
        let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = s.device_mut().enqueue_raw_bytes(&buf[..n]) {
            log::warn!("console input dropped: {e:?}");
        }
    }
}

/// Wakes the loop when a device or a vCPU thread ends the VM.
#[derive(Debug)]
pub(crate) struct ExitWatcher {
    pub(crate) fds: Vec<EventFd>,
    pub(crate) done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        for fd in &self.fds {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch exit event: {e:?}");
                self.done.store(true, Ordering::SeqCst);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps<'_>) {
        if let Some(fd) = self.fds.iter().find(|f| f.as_raw_fd() == events.fd()) {
            let _ = fd.read();
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Puts the terminal in raw mode; restores it on drop.
#[derive(Debug)]
pub(crate) struct RawTerminal;

impl RawTerminal {
    pub(crate) fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } != 1 {
            return None;
        }
        match std::io::stdin().lock().set_raw_mode() {
            Ok(()) => Some(RawTerminal),
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}
