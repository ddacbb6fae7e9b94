//! virtio for virtkit: the [`VirtioDevice`] trait, the virtio-mmio v2
//! transport ([`mmio::MmioTransport`]), [`DeviceQueue`] (how every device
//! model takes descriptor chains, so that a driver's bogus ring indices stop
//! the queue instead of spinning the host), [`DeviceConfig`] (feature
//! negotiation and the read-only config space, kept once for every device
//! model) and the virtio-blk device ([`blk::Block`]) over any
//! [`virtkit_block::BlockBackend`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use virtkit_virtio::mmio::MmioTransport;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::EventFd;
//!
//! # #[derive(Debug)] struct Dummy;
//! # impl virtkit_virtio::VirtioDevice for Dummy {
//! #   fn device_type(&self) -> u32 { 42 }
//! #   fn queue_max_sizes(&self) -> &[u16] { &[16] }
//! #   fn device_features(&self) -> u64 { virtkit_virtio::mmio::VIRTIO_F_VERSION_1 }
//! #   fn set_acked_features(&mut self, _: u64) {}
//! #   fn read_config(&self, _: u64, d: &mut [u8]) { d.fill(0) }
//! #   fn write_config(&mut self, _: u64, _: &[u8]) {}
//! #   fn activate(&mut self, _: virtkit_virtio::GuestMem, _: Arc<dyn virtkit_virtio::Interrupt>,
//! #       _: Vec<virtkit_virtio::ActiveQueue>) -> Result<(), virtkit_virtio::ActivateError> { Ok(()) }
//! #   fn reset(&mut self) {}
//! #   fn queue_states(&self) -> Vec<virtio_queue::QueueState> { Vec::new() }
//! # }
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let dev = Arc::new(Mutex::new(Dummy));
//! let mut t = MmioTransport::new(dev, mem, EventFd::new(0).unwrap()).unwrap();
//! let mut magic = [0u8; 4];
//! t.read(0, &mut magic);
//! assert_eq!(&magic, b"virt");
//! ```
#![deny(missing_docs)]

pub mod blk;
pub mod config;
pub mod device;
pub mod mmio;
pub mod queue;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod watchdog;

pub use config::DeviceConfig;
pub use device::{ActivateError, ActiveQueue, GuestMem, Interrupt, InterruptReason, VirtioDevice};
pub use queue::{DeviceQueue, QueueFault};
