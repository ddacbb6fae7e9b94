//! Virtual machines and vCPUs for x86_64: a hypervisor abstraction and its KVM
//! implementation.
//!
//! * [`hypervisor`]: the traits [`Hypervisor`] -> [`Vm`] -> [`Vcpu`] (the shape of Cloud
//!   Hypervisor's `hypervisor` crate) and [`VmExit`]. A VMM written against them runs on
//!   KVM ([`KvmHypervisor`]) or, in tests, on `fake` (feature `test-utils`), whose vCPUs
//!   replay a script of exits.
//! * [`KvmVm`]: creates the VM (TSS and identity-map addresses, in-kernel irqchip and PIT),
//!   registers `virtkit-memory` RAM as memory slots (with optional dirty logging), and wires
//!   irqfds and ioeventfds for devices.
//! * [`KvmVcpu`]: CPUID from KVM's supported set filtered per vCPU ([`cpuid`]: APIC ids in leaves
//!   1/0xB/0x1F, cache and topology leaves 4 and 0x8000_001D, hypervisor bit, KVM signature),
//!   default MSRs, LAPIC LINT0 ExtINT / LINT1 NMI, FPU, and the entry state produced by
//!   `virtkit-boot` (64-bit long mode or 32-bit PVH).
//! * [`start_vcpu`]: one thread per vCPU (any [`Vcpu`]) whose run loop dispatches port I/O and MMIO exits
//!   through [`Buses`] (a [`BusDevice`] per address range) and ends with a typed
//!   [`VcpuOutcome`]; [`VcpuHandle`] pauses, resumes and stops it from another thread (a
//!   real-time signal plus `immediate_exit`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use virtkit_vcpu::{start_vcpu, Buses, Hypervisor, KvmHypervisor, ThreadOptions, VmConfig};
//! use virtkit_memory::GuestMemoryBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ram = GuestMemoryBuilder::from_mib(2).build()?;
//! let hv = KvmHypervisor { config: VmConfig { irqchip: false } };
//! let vm = hv.create_vm()?;
//! vm.register_memory(&ram)?;
//! let vcpu = vm.create_vcpu(0, 1)?;
//! // ... write code into `ram`, vcpu.set_entry(...) ...
//! let handle = start_vcpu(vcpu, Arc::new(Buses::default()), ThreadOptions::default())?;
//! println!("{:?}", handle.join()?);
//! # Ok(()) }
//! ```
//!
//! A runnable example of the pieces without /dev/kvm:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use virtkit_vcpu::{Bus, BusDevice};
//!
//! struct Scratch(u8);
//! impl BusDevice for Scratch {
//!     fn read(&mut self, _offset: u64, data: &mut [u8]) { data.fill(self.0) }
//!     fn write(&mut self, _offset: u64, data: &[u8]) { self.0 = data[0] }
//! }
//! let mut bus = Bus::new();
//! bus.insert(Arc::new(Mutex::new(Scratch(0))), 0x80, 1).unwrap();
//! assert!(bus.write(0x80, &[7]));
//! let mut b = [0u8];
//! assert!(bus.read(0x80, &mut b));
//! assert_eq!(b[0], 7);
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod cpuid;
mod error;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
pub mod hypervisor;
pub mod ioctls;
mod kvm_state;
pub mod regs;
pub mod state;
mod thread;
mod vcpu;
mod vm;

pub use bus::{Bus, BusDevice, BusError, Buses, SharedDevice};
pub use error::{SystemEvent, VcpuError, VcpuOutcome, VmError};
pub use hypervisor::{Hypervisor, Kick, Vcpu, Vm, VmExit};
pub use state::{VcpuState, VmState};
pub use thread::{kick_signal, run_once, start_vcpu, ThreadOptions, ThreadSetup, VcpuHandle};
pub use vcpu::KvmVcpu;
pub use vm::{KvmHypervisor, KvmVm, VmConfig, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
pub use vmm_sys_util::eventfd::EventFd;
