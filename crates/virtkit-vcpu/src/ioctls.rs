//! The ioctl request numbers the KVM backend issues, grouped by when it issues them, for
//! seccomp filters that check `ioctl`'s request argument (see
//! [`Hypervisor::ioctls`](crate::Hypervisor::ioctls)).
//!
//! The numbers are computed here from the `kvm_bindings` structures with the kernel's
//! `_IOC` encoding, so they follow the structure sizes the backend passes.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_enable_cap, kvm_fpu,
    kvm_ioeventfd, kvm_irq_level, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state,
    kvm_msr_list, kvm_msrs, kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

const KVMIO: u64 = 0xAE;
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(NONE, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(READ, nr, std::mem::size_of::<T>())
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(WRITE, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(READ | WRITE, nr, std::mem::size_of::<T>())
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = io(0x80);

/// What a running vCPU's thread issues: `KVM_RUN` and the getters of a snapshot (a paused
/// vCPU saves its state on its own thread, `VcpuHandle::save_state`).
pub const VCPU_THREAD: &[u64] = &[
    KVM_RUN,
    ior::<kvm_regs>(0x81),        // KVM_GET_REGS
    ior::<kvm_sregs>(0x83),       // KVM_GET_SREGS
    iowr::<kvm_msrs>(0x88),       // KVM_GET_MSRS
    ior::<kvm_fpu>(0x8c),         // KVM_GET_FPU
    ior::<kvm_lapic_state>(0x8e), // KVM_GET_LAPIC
    ior::<kvm_mp_state>(0x98),    // KVM_GET_MP_STATE
    ior::<kvm_vcpu_events>(0x9f), // KVM_GET_VCPU_EVENTS
    ior::<kvm_debugregs>(0xa1),   // KVM_GET_DEBUGREGS
    io(0xa3),                     // KVM_GET_TSC_KHZ
    ior::<kvm_xsave>(0xa4),       // KVM_GET_XSAVE
    ior::<kvm_xcrs>(0xa6),        // KVM_GET_XCRS
    iowr::<kvm_cpuid2>(0x91),     // KVM_GET_CPUID2
    ior::<kvm_xsave>(0xcf),       // KVM_GET_XSAVE2
];

/// What a built VM's event loop issues: device interrupts (`KVM_IRQ_LINE`, `KVM_IRQFD`
/// and `KVM_IOEVENTFD` when a virtio device is activated or reset), the VM state of a
/// snapshot (`KVM_GET_IRQCHIP`, `KVM_GET_PIT2`, `KVM_GET_CLOCK`) and the dirty log of a
/// live migration (`KVM_SET_USER_MEMORY_REGION` to turn logging on and off,
/// `KVM_GET_DIRTY_LOG`).
pub const VM_RUNTIME: &[u64] = &[
    iow::<kvm_irq_level>(0x61),               // KVM_IRQ_LINE
    iowr::<kvm_irq_level>(0x67),              // KVM_IRQ_LINE_STATUS
    iow::<kvm_irqfd>(0x76),                   // KVM_IRQFD
    iow::<kvm_ioeventfd>(0x79),               // KVM_IOEVENTFD
    iowr::<kvm_irqchip>(0x62),                // KVM_GET_IRQCHIP
    ior::<kvm_pit_state2>(0x9f),              // KVM_GET_PIT2
    ior::<kvm_clock_data>(0x7c),              // KVM_GET_CLOCK
    iow::<kvm_userspace_memory_region>(0x46), // KVM_SET_USER_MEMORY_REGION
    iow::<kvm_dirty_log>(0x42),               // KVM_GET_DIRTY_LOG
];

/// What building or restoring a VM issues, on top of [`VM_RUNTIME`] and [`VCPU_THREAD`]:
/// the system calls on `/dev/kvm`, VM creation and set-up, vCPU creation and set-up, and
/// every setter a restore uses.
pub const BUILD: &[u64] = &[
    io(0x00),                     // KVM_GET_API_VERSION
    io(0x01),                     // KVM_CREATE_VM
    iowr::<kvm_msr_list>(0x02),   // KVM_GET_MSR_INDEX_LIST
    io(0x03),                     // KVM_CHECK_EXTENSION
    io(0x04),                     // KVM_GET_VCPU_MMAP_SIZE
    iowr::<kvm_cpuid2>(0x05),     // KVM_GET_SUPPORTED_CPUID
    iowr::<kvm_msr_list>(0x0a),   // KVM_GET_MSR_FEATURE_INDEX_LIST
    io(0x41),                     // KVM_CREATE_VCPU
    io(0x47),                     // KVM_SET_TSS_ADDR
    iow::<u64>(0x48),             // KVM_SET_IDENTITY_MAP_ADDR
    io(0x60),                     // KVM_CREATE_IRQCHIP
    ior::<kvm_irqchip>(0x63),     // KVM_SET_IRQCHIP
    iow::<kvm_pit_config>(0x77),  // KVM_CREATE_PIT2
    iow::<kvm_clock_data>(0x7b),  // KVM_SET_CLOCK
    iow::<kvm_pit_state2>(0xa0),  // KVM_SET_PIT2
    iow::<kvm_enable_cap>(0xa3),  // KVM_ENABLE_CAP
    iow::<kvm_regs>(0x82),        // KVM_SET_REGS
    iow::<kvm_sregs>(0x84),       // KVM_SET_SREGS
    iow::<kvm_msrs>(0x89),        // KVM_SET_MSRS
    iow::<kvm_fpu>(0x8d),         // KVM_SET_FPU
    iow::<kvm_lapic_state>(0x8f), // KVM_SET_LAPIC
    iow::<kvm_cpuid2>(0x90),      // KVM_SET_CPUID2
    iow::<kvm_mp_state>(0x99),    // KVM_SET_MP_STATE
    iow::<kvm_vcpu_events>(0xa0), // KVM_SET_VCPU_EVENTS
    iow::<kvm_debugregs>(0xa2),   // KVM_SET_DEBUGREGS
    io(0xa2),                     // KVM_SET_TSC_KHZ
    iow::<kvm_xsave>(0xa5),       // KVM_SET_XSAVE
    iow::<kvm_xcrs>(0xa7),        // KVM_SET_XCRS
];

/// The ioctl request numbers of a hypervisor backend, by when they are issued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypervisorIoctls {
    /// A running vCPU's own thread.
    pub vcpu_thread: &'static [u64],
    /// The event loop of a built VM (devices, snapshots, migration).
    pub vm_runtime: &'static [u64],
    /// Building or restoring a VM, beyond the two above.
    pub build: &'static [u64],
}

/// KVM's numbers.
pub const KVM: HypervisorIoctls = HypervisorIoctls {
    vcpu_thread: VCPU_THREAD,
    vm_runtime: VM_RUNTIME,
    build: BUILD,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Values from <linux/kvm.h> as the kernel's _IOC macros expand them on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(VCPU_THREAD[1], 0x8090_ae81); // KVM_GET_REGS
        assert_eq!(VCPU_THREAD[2], 0x8138_ae83); // KVM_GET_SREGS
        assert_eq!(VCPU_THREAD[10], 0x9000_aea4); // KVM_GET_XSAVE
        assert_eq!(VM_RUNTIME[2], 0x4020_ae76); // KVM_IRQFD
        assert_eq!(VM_RUNTIME[3], 0x4040_ae79); // KVM_IOEVENTFD
        assert_eq!(VM_RUNTIME[7], 0x4020_ae46); // KVM_SET_USER_MEMORY_REGION
        assert_eq!(BUILD[1], 0xae01); // KVM_CREATE_VM
        assert_eq!(BUILD[5], 0xc008_ae05); // KVM_GET_SUPPORTED_CPUID
        assert_eq!(BUILD[21], 0x4008_ae90); // KVM_SET_CPUID2
    }

    #[test]
    fn no_number_is_listed_twice_in_one_group() {
        for group in [VCPU_THREAD, VM_RUNTIME, BUILD] {
            let mut v = group.to_vec();
            v.sort_unstable();
            v.dedup();
            assert_eq!(v.len(), group.len());
        }
    }
}
