//! Saved state of a vCPU and of a VM's in-kernel devices, for snapshots and migration.
//!
//! [`VcpuState`] and [`VmState`] are serde types tagged with the hypervisor they came from;
//! a VMM stores them without looking inside. For KVM they hold what the kernel needs to
//! resume a vCPU exactly where it stopped: general and special registers, XSAVE (FPU, SSE,
//! AVX), XCRs, every MSR KVM lists for saving, the LAPIC, the MP state, pending events,
//! debug registers and the TSC frequency; and the PIC pair, the IOAPIC, the PIT and the
//! KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

/// A vCPU's saved state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "hypervisor", rename_all = "lowercase")]
pub enum VcpuState {
    /// From KVM.
    Kvm(Box<KvmVcpuState>),
    /// From the fake hypervisor (tests).
    Fake {
        /// The vCPU id.
        id: u8,
        /// Script steps already replayed.
        position: u64,
    },
}

/// A VM's saved in-kernel device state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "hypervisor", rename_all = "lowercase")]
pub enum VmState {
    /// From KVM (present only with an in-kernel irqchip).
    Kvm(Box<KvmVmState>),
    /// From the fake hypervisor (tests).
    Fake,
}

/// KVM's vCPU state. Opaque: its parts are kernel ABI structures.
#[derive(Debug, Serialize, Deserialize)]
pub struct KvmVcpuState {
    pub(crate) id: u8,
    pub(crate) regs: kvm_regs,
    pub(crate) sregs: kvm_sregs,
    pub(crate) xsave: kvm_xsave,
    pub(crate) xcrs: kvm_xcrs,
    pub(crate) msrs: Vec<kvm_msr_entry>,
    pub(crate) lapic: Option<kvm_lapic_state>,
    pub(crate) mp_state: kvm_mp_state,
    pub(crate) events: kvm_vcpu_events,
    pub(crate) debugregs: kvm_debugregs,
    pub(crate) tsc_khz: Option<u32>,
}

impl KvmVcpuState {
    /// The vCPU it was saved from.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The guest's instruction pointer when saved.
    pub fn rip(&self) -> u64 {
        self.regs.rip
    }

    /// How many MSRs were saved.
    pub fn msr_count(&self) -> usize {
        self.msrs.len()
    }

    /// The TSC frequency (kHz) the guest ran at, when KVM reported it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.tsc_khz
    }

    /// One line with what tells where a guest was when it stopped (a triple fault):
    /// instruction and stack pointers, control registers, EFER, CS, the IDT and the
    /// exception KVM had pending or injected.
    pub fn summary(&self) -> String {
        let (r, s, e) = (&self.regs, &self.sregs, &self.events.exception);
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
             efer={:#x} cs={:#x}/{:#x} idt={:#x}+{:#x} exception: injected={} pending={} \
             nr={} error_code={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.cs.base,
            s.idt.base,
            s.idt.limit,
            e.injected,
            e.pending,
            e.nr,
            e.error_code,
        )
    }
}

impl VcpuState {
    /// [`KvmVcpuState::summary`], or what the fake hypervisor knows.
    pub fn summary(&self) -> String {
        match self {
            VcpuState::Kvm(k) => k.summary(),
            VcpuState::Fake { id, position } => format!("fake vCPU {id} at script step {position}"),
        }
    }
}

/// KVM's VM-wide in-kernel device state.
#[derive(Debug, Serialize, Deserialize)]
pub struct KvmVmState {
    pub(crate) pic_master: kvm_irqchip,
    pub(crate) pic_slave: kvm_irqchip,
    pub(crate) ioapic: kvm_irqchip,
    pub(crate) pit: kvm_pit_state2,
    pub(crate) clock: kvm_clock_data,
}
