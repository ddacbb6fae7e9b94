//! The VM: KVM file descriptors, in-kernel irqchip and PIT, memory slots, irqfd and ioeventfd.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use virtkit_memory::{GuestAddress, GuestRam, Irq, RamRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::vcpu::Vcpu;

/// The address of the 3-page TSS region KVM needs on Intel (inside the MMIO gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The identity-map page KVM needs on Intel, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Errors from VM setup.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// A capability the VMM needs is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// An ioctl failed.
    #[error("{what}: {error}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The error.
        error: kvm_ioctls::Error,
    },
    /// More memory regions than KVM has slots.
    #[error("guest memory has more regions than KVM's {0} slots")]
    TooManySlots(usize),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |error| VmError::Kvm { what, error }
}

/// VM options.
#[derive(Debug, Clone, Copy)]
pub struct VmConfig {
    /// Create the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT. Without it, HLT exits to
    /// userspace (useful for tests).
    pub irqchip: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig { irqchip: true }
    }
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    config: VmConfig,
    slots: Vec<RamRegion>,
}

impl Vm {
    /// Opens /dev/kvm and creates the VM: TSS and identity map addresses, then the irqchip and
    /// PIT when asked for.
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in [
            (Cap::ImmediateExit, "immediate exit"),
            (Cap::UserMemory, "user memory"),
            (Cap::Irqfd, "irqfd"),
            (Cap::Ioeventfd, "ioeventfd"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        if config.irqchip {
            fd.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }
        Ok(Vm {
            kvm,
            fd,
            config,
            slots: Vec::new(),
        })
    }

    /// The VM options.
    pub fn config(&self) -> VmConfig {
        self.config
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor, for what this crate does not wrap.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// KVM's supported CPUID.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// KVM's MSR index list.
    pub fn msr_index_list(&self) -> Result<Vec<u32>, VmError> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec())
    }

    /// Registers every RAM region as a memory slot (slot i = region i), with dirty logging
    /// when the RAM was built with dirty tracking.
    pub fn register_memory(&mut self, ram: &GuestRam) -> Result<(), VmError> {
        let flags = if ram.track_dirty_pages() {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let maps = ram.host_mappings();
        if maps.len() + self.slots.len() > self.kvm.get_nr_memslots() {
            return Err(VmError::TooManySlots(self.kvm.get_nr_memslots()));
        }
        for (region, host) in maps {
            let slot = self.slots.len() as u32;
            let r = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start.0,
                memory_size: region.size,
                userspace_addr: host,
            };
            // SAFETY: `host..host+size` is a live mapping owned by `ram`'s GuestMemoryMmap; the
            // VMM keeps `ram` alive for as long as the VM runs (callers hold the GuestRam).
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
            self.slots.push(region);
        }
        Ok(())
    }

    /// The registered slots (index = slot number).
    pub fn slots(&self) -> &[RamRegion] {
        &self.slots
    }

    /// The dirty bitmap of `slot` since the last call (see `virtkit_memory::dirty`).
    pub fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, VmError> {
        let size = self
            .slots
            .get(slot as usize)
            .map(|r| r.size as usize)
            .ok_or(VmError::TooManySlots(slot as usize))?;
        self.fd
            .get_dirty_log(slot, size)
            .map_err(kvm_err("KVM_GET_DIRTY_LOG"))
    }

    /// Makes a write to `evt` raise `irq` (edge) on the in-kernel irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, irq: Irq) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, irq.0)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// Makes guest writes to the MMIO address `addr` signal `evt` in the kernel, without an exit
    /// (only writes of `datamatch` when given).
    pub fn register_mmio_ioeventfd(
        &self,
        evt: &EventFd,
        addr: GuestAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let a = IoEventAddress::Mmio(addr.0);
        match datamatch {
            Some(v) => self.fd.register_ioevent(evt, &a, v),
            None => self.fd.register_ioevent(evt, &a, NoDatamatch),
        }
        .map_err(kvm_err("KVM_IOEVENTFD"))
    }

    /// Like [`Vm::register_mmio_ioeventfd`] for an I/O port.
    pub fn register_pio_ioeventfd(
        &self,
        evt: &EventFd,
        port: u16,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let a = IoEventAddress::Pio(u64::from(port));
        match datamatch {
            Some(v) => self.fd.register_ioevent(evt, &a, v),
            None => self.fd.register_ioevent(evt, &a, NoDatamatch),
        }
        .map_err(kvm_err("KVM_IOEVENTFD"))
    }

    /// Sets an irqchip input line.
    pub fn set_irq_line(&self, irq: Irq, active: bool) -> Result<(), VmError> {
        self.fd
            .set_irq_line(irq.0, active)
            .map_err(kvm_err("KVM_IRQ_LINE"))
    }

    /// Creates vCPU `id` (its APIC id).
    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::from_fd(fd, id))
    }
}
