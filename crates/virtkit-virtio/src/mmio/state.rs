//! A transport's state for snapshots: registers, negotiated features, interrupt status and
//! every queue (from the device when it is active, so the ring positions are live).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{lock, MmioError, MmioTransport};

/// One queue's saved state (virtio-queue's `QueueState`, as a serde type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// The maximum size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// The next available-ring index the device reads.
    pub next_avail: u16,
    /// The next used-ring index the device writes.
    pub next_used: u16,
    /// Whether VIRTIO_RING_F_EVENT_IDX is in use.
    pub event_idx: bool,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        SavedQueue {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        QueueState {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
        }
    }
}

/// A virtio-mmio transport's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The virtio device id, checked on restore.
    pub device_type: u32,
    /// The device status register (without device-set bits).
    pub status: u32,
    /// Bits the device set itself (`DEVICE_NEEDS_RESET`).
    pub device_status: u32,
    /// The interrupt status register.
    pub interrupt_status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote (acked at FEATURES_OK).
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the device was activated.
    pub activated: bool,
    /// Every queue of the device, in order.
    pub queues: Vec<SavedQueue>,
}

impl MmioTransport {
    /// The transport's state. Take it with the guest's vCPUs paused and the device's event
    /// loop not running, so the rings do not move underneath.
    pub fn save_state(&self) -> MmioState {
        let dev = lock(&self.device);
        let mut queues: Vec<SavedQueue> = self.queues.iter().map(|q| q.state().into()).collect();
        if self.activated {
            // The device holds the live queues: those the driver made ready, in order.
            let mut live = dev.queue_states().into_iter();
            for q in queues.iter_mut().filter(|q| q.ready) {
                if let Some(l) = live.next() {
                    *q = l.into();
                }
            }
        }
        MmioState {
            device_type: dev.device_type(),
            status: self.status,
            device_status: self.interrupt.device_status.load(Ordering::SeqCst),
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            activated: self.activated,
            queues,
        }
    }

    /// Puts a fresh transport (its device new, not yet activated) in a saved state: the
    /// registers, the acked features, the queues, and, when the saved device was active,
    /// the device activated again on those queues. A state that does not fit this device
    /// (another device type, other queue sizes) is refused before anything changes.
    pub fn restore_state(&mut self, s: &MmioState) -> Result<(), MmioError> {
        let (device_type, offered) = {
            let dev = lock(&self.device);
            (dev.device_type(), dev.device_features())
        };
        if s.device_type != device_type {
            return Err(MmioError::State(format!(
                "saved device type {} is not this device's {device_type}",
                s.device_type
            )));
        }
        if s.queues.len() != self.queues.len() {
            return Err(MmioError::State(format!(
                "saved {} queues, the device has {}",
                s.queues.len(),
                self.queues.len()
            )));
        }
        if s.driver_features & !offered != 0 {
            return Err(MmioError::State(format!(
                "saved features {:#x} are not all offered ({offered:#x})",
                s.driver_features
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (saved, q) in s.queues.iter().zip(&self.queues) {
            if saved.max_size != q.max_size() {
                return Err(MmioError::State(format!(
                    "saved queue size {} is not the device's {}",
                    saved.max_size,
                    q.max_size()
                )));
            }
            let state: QueueState = (*saved).into();
            queues
                .push(Queue::try_from(state).map_err(|e| MmioError::State(format!("queue: {e}")))?);
        }
        self.queues = queues;
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        self.interrupt
            .device_status
            .store(s.device_status, Ordering::SeqCst);
        self.interrupt
            .status
            .store(s.interrupt_status, Ordering::SeqCst);
        if s.status & super::status::FEATURES_OK != 0 {
            lock(&self.device).set_acked_features(s.driver_features);
        }
        self.activated = false;
        if s.activated {
            self.activate();
            if !self.activated {
                return Err(MmioError::State(
                    "the device refused activation with the saved queues".into(),
                ));
            }
            // A notification may have been pending, not yet seen by the device, when the
            // state was saved: kick every ready queue once, so chains the driver queued
            // before the snapshot are served (an empty ring costs one look).
            for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
                if q.ready() {
                    let _ = evt.write(1);
                }
            }
        }
        Ok(())
    }
}
