//! [`DeviceQueue`]: a device's guarded view of one virtqueue.
//!
//! Every device model takes descriptor chains through [`DeviceQueue::pop`]
//! and asks for more work with [`DeviceQueue::rearm`], never through
//! virtio-queue's `pop_descriptor_chain`/`enable_notification` directly.
//! Those two disagree on a driver error: with an avail index more than a
//! queue size ahead of the device, `pop_descriptor_chain` returns `None`
//! while `enable_notification` keeps returning `true`, so the usual
//! "pop until empty, re-enable, go again while more arrived" loop spins
//! forever on a host CPU.
//!
//! Here both read the avail index the same way and classify it: empty,
//! some valid chains pending, or a [`QueueFault`]. A fault is sticky: the
//! queue yields nothing more until the driver resets the device (which
//! drops the `DeviceQueue`), and the transport is told through
//! [`InterruptReason::NeedsReset`], which sets `DEVICE_NEEDS_RESET` and
//! raises a configuration-change interrupt (virtio 1.2, 2.1.2).
//!
//! With these two calls a processing loop cannot spin: [`DeviceQueue::rearm`]
//! returns `true` only when valid chains are pending, and the next
//! [`DeviceQueue::pop`] then either returns one or records a fault.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::device::{GuestMem, Interrupt, InterruptReason};

/// Bytes before the first entry of the avail ring (flags and index).
const AVAIL_RING_HEADER: u64 = 4;

/// A driver error that stops a queue until the driver resets the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFault {
    /// The avail index is further ahead of the device than the queue has
    /// entries.
    #[error(
        "avail index {avail} is {} entries ahead of the device's position {next} on a queue of {size}",
        avail.wrapping_sub(*next)
    )]
    BogusAvailIndex {
        /// The index the driver published.
        avail: u16,
        /// The device's next avail position.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// The avail ring (its index or an entry) cannot be read from guest
    /// memory.
    #[error("the avail ring at {0:#x} cannot be read")]
    UnreadableAvailRing(u64),
    /// An avail ring entry names a descriptor outside the table.
    #[error("avail ring entry names descriptor {head} of a queue of {size}")]
    BadHeadIndex {
        /// The head index read from the ring.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// The queue was not made ready before use (or its avail ring is at
    /// address 0, which virtio-queue takes for a queue never set up).
    #[error("the queue is not ready (or its avail ring is at address 0)")]
    NotReady,
}

/// One virtqueue as a device model uses it: the negotiated [`Queue`], the
/// fault that stopped it (if any), and whom to tell about a fault.
#[derive(Debug)]
pub struct DeviceQueue {
    queue: Queue,
    index: u16,
    fault: Option<QueueFault>,
    interrupt: Option<Arc<dyn Interrupt>>,
}

impl DeviceQueue {
    /// Queue number `index` of a device, whose faults are reported through
    /// `interrupt` ([`InterruptReason::NeedsReset`]).
    pub fn new(queue: Queue, index: u16, interrupt: Arc<dyn Interrupt>) -> Self {
        DeviceQueue {
            queue,
            index,
            fault: None,
            interrupt: Some(interrupt),
        }
    }

    /// A queue whose faults are recorded but reported to no one (tests,
    /// benchmarks, fuzzing).
    pub fn detached(queue: Queue) -> Self {
        DeviceQueue {
            queue,
            index: 0,
            fault: None,
            interrupt: None,
        }
    }

    /// The fault that stopped this queue, if any.
    pub fn fault(&self) -> Option<QueueFault> {
        self.fault
    }

    /// The underlying queue state (size, indices, addresses).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The underlying queue, for used-ring bookkeeping a device does itself
    /// (publishing several used entries at once). Take chains only through
    /// [`DeviceQueue::pop`].
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// The queue size the driver chose.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// How many chains the driver has published that the device has not
    /// taken; records a fault (and returns 0) when that number is invalid.
    pub fn pending(&mut self, mem: &GuestMem) -> u16 {
        if self.fault.is_some() {
            return 0;
        }
        if !self.queue.ready() {
            self.fail(QueueFault::NotReady);
            return 0;
        }
        let next = self.queue.next_avail();
        let size = self.queue.size();
        let avail = match self.queue.avail_idx(mem, Ordering::Acquire) {
            Ok(Wrapping(i)) => i,
            Err(_) => {
                let at = self.avail_ring_addr().wrapping_add(2);
                self.fail(QueueFault::UnreadableAvailRing(at));
                return 0;
            }
        };
        let pending = avail.wrapping_sub(next);
        if pending > size {
            self.fail(QueueFault::BogusAvailIndex { avail, next, size });
            return 0;
        }
        pending
    }

    /// Take the next available chain, or `None` when there is none or the
    /// queue has faulted (see [`DeviceQueue::fault`]).
    pub fn pop<'m>(&mut self, mem: &'m GuestMem) -> Option<DescriptorChain<&'m GuestMem>> {
        if self.pending(mem) == 0 {
            return None;
        }
        let size = self.queue.size();
        let slot = self.avail_entry_addr();
        // A valid index was pending a moment ago and a correct driver only
        // moves it forward, so anything but a chain here is a driver error.
        let chain = match self.queue.iter(mem) {
            Ok(mut it) => it.next(),
            Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                let avail = self
                    .queue
                    .avail_idx(mem, Ordering::Relaxed)
                    .map_or(0, |w| w.0);
                let next = self.queue.next_avail();
                self.fail(QueueFault::BogusAvailIndex { avail, next, size });
                return None;
            }
            // An avail ring at address 0 reads as a queue never set up.
            Err(virtio_queue::Error::QueueNotReady) => {
                self.fail(QueueFault::NotReady);
                return None;
            }
            Err(_) => None,
        };
        let Some(chain) = chain else {
            self.fail(QueueFault::UnreadableAvailRing(slot));
            return None;
        };
        let head = chain.head_index();
        if head >= size {
            self.fail(QueueFault::BadHeadIndex { head, size });
            return None;
        }
        Some(chain)
    }

    /// Put the last popped chain back, to be popped again later.
    pub fn undo_pop(&mut self) {
        let prev = self.queue.next_avail().wrapping_sub(1);
        self.queue.set_next_avail(prev);
    }

    /// Ask the driver for notifications again and say whether valid chains
    /// are pending (taken meanwhile without a notification). `false` when
    /// the queue is empty or has faulted: a loop that goes on only while
    /// this returns `true` cannot spin.
    pub fn rearm(&mut self, mem: &GuestMem) -> bool {
        if self.fault.is_some() {
            return false;
        }
        if let Err(e) = self.queue.enable_notification(mem) {
            warn!("virtio: queue {}: enable notification: {e}", self.index);
            self.fail(QueueFault::UnreadableAvailRing(self.avail_ring_addr()));
            return false;
        }
        self.pending(mem) > 0
    }

    /// Stop notifications while the device drains the queue.
    pub fn disable_notification(&mut self, mem: &GuestMem) {
        if self.fault.is_some() {
            return;
        }
        if let Err(e) = self.queue.disable_notification(mem) {
            warn!("virtio: queue {}: disable notification: {e}", self.index);
        }
    }

    /// Return chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMem, head: u16, len: u32) -> Result<(), QueueFault> {
        if let Some(f) = self.fault {
            return Err(f);
        }
        self.queue
            .add_used(mem, head, len)
            .map_err(|_| QueueFault::BadHeadIndex {
                head,
                size: self.queue.size(),
            })
    }

    /// Whether the driver wants an interrupt for the chains used since the
    /// last call (honours `VIRTIO_RING_F_EVENT_IDX`).
    pub fn needs_notification(&mut self, mem: &GuestMem) -> bool {
        self.queue.needs_notification(mem).unwrap_or(true)
    }

    fn avail_ring_addr(&self) -> u64 {
        self.queue.avail_ring()
    }

    fn avail_entry_addr(&self) -> u64 {
        let size = u64::from(self.queue.size().max(1));
        let slot = u64::from(self.queue.next_avail()) % size;
        self.avail_ring_addr()
            .wrapping_add(AVAIL_RING_HEADER + slot * 2)
    }

    fn fail(&mut self, fault: QueueFault) {
        if self.fault.is_some() {
            return;
        }
        warn!(
            "virtio: queue {}: {fault}; ignoring the queue until the driver resets the device",
            self.index
        );
        self.fault = Some(fault);
        if let Some(irq) = &self.interrupt {
            if let Err(e) = irq.signal(InterruptReason::NeedsReset) {
                warn!("virtio: queue {}: signalling needs-reset: {e}", self.index);
            }
        }
    }
}
