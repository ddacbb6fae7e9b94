//! The hypervisor abstraction: [`Hypervisor`] creates a [`Vm`], a [`Vm`] creates configured
//! [`Vcpu`]s, and a [`Vcpu`] runs guest code until an exit ([`VmExit`]).
//!
//! The shape follows Cloud Hypervisor's `hypervisor` crate. KVM
//! ([`crate::KvmHypervisor`]) is the one real implementation; the `test-utils` feature adds
//! `fake`, whose vCPUs replay a script of exits, so that a device manager or a VMM
//! lifecycle can be tested without `/dev/kvm`. Nothing here names a `kvm-ioctls` type.

use std::sync::Arc;

use virtkit_boot::CpuEntry;
use virtkit_memory::{GuestAddress, GuestRam, Irq, RamRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{SystemEvent, VcpuError, VmError};
use crate::state::{VcpuState, VmState};

/// Why a vCPU's run returned to the VMM.
#[derive(Debug, PartialEq, Eq)]
pub enum VmExit<'a> {
    /// An `in` from `port`: fill `data`.
    IoIn {
        /// The port.
        port: u16,
        /// Where the value goes.
        data: &'a mut [u8],
    },
    /// An `out` of `data` to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The value.
        data: &'a [u8],
    },
    /// A read of `data.len()` bytes at guest physical `addr` that no memory backs.
    MmioRead {
        /// The address.
        addr: u64,
        /// Where the value goes.
        data: &'a mut [u8],
    },
    /// A write of `data` at guest physical `addr` that no memory backs.
    MmioWrite {
        /// The address.
        addr: u64,
        /// The value.
        data: &'a [u8],
    },
    /// The run was interrupted (a kick, a signal, an interrupt window): run again.
    Interrupted,
    /// The guest executed HLT (only without an in-kernel irqchip).
    Halt,
    /// Triple fault (a reset on a PC).
    Shutdown,
    /// A platform event (power off, reset, crash).
    SystemEvent(SystemEvent),
    /// The hardware refused the guest state.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// The physical CPU.
        cpu: u32,
    },
    /// The hypervisor could not handle the guest (for example an instruction it cannot
    /// emulate).
    InternalError {
        /// The hypervisor's sub-error code.
        suberror: u32,
    },
    /// An exit this abstraction has no variant for.
    Unhandled(String),
}

/// Makes a vCPU's current or next run return [`VmExit::Interrupted`] at once, from any
/// thread. Together with a signal to the vCPU thread this closes the race between "about to
/// enter the guest" and "asked to stop".
pub trait Kick: Send + Sync + std::fmt::Debug {
    /// Sets (or clears) the request to leave the guest immediately.
    fn set_immediate_exit(&self, on: bool);
}

/// A virtual CPU, configured by [`Vm::create_vcpu`] and not yet running.
pub trait Vcpu: Send + std::fmt::Debug {
    /// The vCPU id (= APIC id).
    fn id(&self) -> u8;
    /// Points the vCPU at an entry state produced by `virtkit-boot`.
    fn set_entry(&mut self, entry: &CpuEntry) -> Result<(), VcpuError>;
    /// Runs guest code until the next exit.
    fn run(&mut self) -> Result<VmExit<'_>, VcpuError>;
    /// The handle another thread uses to kick this vCPU out of [`Vcpu::run`]. It stays
    /// valid (and harmless) after the vCPU is dropped.
    fn kicker(&self) -> Result<Arc<dyn Kick>, VcpuError>;
    /// Saves the vCPU's state (call only while it is not running: before it starts, or
    /// from its own thread while paused, as [`crate::VcpuHandle::save_state`] does).
    fn save_state(&self) -> Result<VcpuState, VcpuError>;
    /// Restores a state saved by [`Vcpu::save_state`] (on the same kind of hypervisor),
    /// before the vCPU first runs.
    fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError>;
}

/// A virtual machine: memory slots, interrupt and notification wiring, vCPUs.
pub trait Vm: Send + Sync + std::fmt::Debug {
    /// The most vCPUs one VM may have.
    fn max_vcpus(&self) -> usize;
    /// Makes the RAM regions guest physical memory. The VM keeps a clone of `ram` (it is
    /// reference counted), so the mappings outlive every vCPU that can reach them.
    fn register_memory(&self, ram: &GuestRam) -> Result<(), VmError>;
    /// Makes a write to `evt` raise the interrupt line `irq`.
    fn register_irqfd(&self, evt: &EventFd, irq: Irq) -> Result<(), VmError>;
    /// Makes guest writes at MMIO `addr` (of `datamatch` only, when given) signal `evt`
    /// without a vCPU exit.
    fn register_mmio_ioeventfd(
        &self,
        evt: &EventFd,
        addr: GuestAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError>;
    /// Creates vCPU `id` of a VM with `cpus` vCPUs, configured (CPUID, MSRs, FPU, LAPIC)
    /// and ready for [`Vcpu::set_entry`].
    fn create_vcpu(&self, id: u8, cpus: u8) -> Result<Box<dyn Vcpu>, VcpuError>;
    /// Saves the VM-wide in-kernel device state (interrupt controllers, timers, clock),
    /// with every vCPU paused.
    fn save_state(&self) -> Result<VmState, VmError>;
    /// Restores a state saved by [`Vm::save_state`], before any vCPU runs.
    fn restore_state(&self, state: &VmState) -> Result<(), VmError>;
    /// Turns dirty-page logging of every memory slot on or off (KVM's
    /// `KVM_MEM_LOG_DIRTY_PAGES`), while the VM runs. Logs what the guest writes, not
    /// what the VMM writes into guest memory.
    fn set_dirty_logging(&self, on: bool) -> Result<(), VmError>;
    /// The pages the guest wrote since logging was turned on or since the last call, per
    /// memory slot: the slot's region and a bitmap (bit `i` of word `w` is page `64w + i`;
    /// see `virtkit_memory::dirty`). Each call starts a new interval.
    fn take_dirty_log(&self) -> Result<Vec<(RamRegion, Vec<u64>)>, VmError>;
}

/// A hypervisor: the thing VMs are made from.
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    /// A short name for logs and `vm.info` ("kvm", "fake").
    fn name(&self) -> &'static str;
    /// Creates an empty VM (with its interrupt controllers when the hypervisor has them).
    fn create_vm(&self) -> Result<Arc<dyn Vm>, VmError>;
    /// The ioctl request numbers this backend issues, for seccomp filters that check
    /// them (none for a backend that issues no ioctls, such as the fake).
    fn ioctls(&self) -> crate::ioctls::HypervisorIoctls {
        crate::ioctls::HypervisorIoctls::default()
    }
}
