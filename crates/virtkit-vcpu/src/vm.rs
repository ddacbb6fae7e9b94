//! The VM: KVM file descriptors, in-kernel irqchip and PIT, memory slots, irqfd and ioeventfd.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use virtkit_memory::{GuestAddress, GuestRam, Irq, RamRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{VcpuError, VmError};
use crate::hypervisor::{Hypervisor, Vcpu, Vm};
use crate::state::VmState;
use crate::vcpu::{KvmVcpu, SaveSetup, VcpuSetup};

/// The address of the 3-page TSS region KVM needs on Intel (inside the MMIO gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The identity-map page KVM needs on Intel, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |error| VmError::Kvm {
        what,
        error: std::io::Error::from_raw_os_error(error.errno()),
    }
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

/// KVM as a [`Hypervisor`]: each [`Hypervisor::create_vm`] opens `/dev/kvm` and makes a
/// [`KvmVm`] with these options.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmHypervisor {
    /// Options for every VM.
    pub config: VmConfig,
}

impl Hypervisor for KvmHypervisor {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>, VmError> {
        Ok(Arc::new(KvmVm::new(self.config)?))
    }

    fn ioctls(&self) -> crate::ioctls::HypervisorIoctls {
        crate::ioctls::KVM
    }
}

/// The memory a VM was given: the slots, and the RAM they point into (kept alive here).
#[derive(Debug, Default)]
struct Memory {
    slots: Vec<RamRegion>,
    /// The host address of each slot's mapping.
    hosts: Vec<u64>,
    rams: Vec<GuestRam>,
    /// Whether the slots have KVM_MEM_LOG_DIRTY_PAGES.
    logging: bool,
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct KvmVm {
    kvm: Kvm,
    fd: VmFd,
    config: VmConfig,
    memory: Mutex<Memory>,
}

impl KvmVm {
    /// Opens /dev/kvm and creates the VM: TSS and identity map addresses, then the irqchip and
    /// PIT when asked for.
    pub fn new(config: VmConfig) -> Result<KvmVm, VmError> {
        let kvm = Kvm::new()
            .map_err(|e| VmError::OpenKvm(std::io::Error::from_raw_os_error(e.errno())))?;
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
        Ok(KvmVm {
            kvm,
            fd,
            config,
            memory: Mutex::new(Memory::default()),
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

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers every RAM region as a memory slot (slot i = region i), with dirty logging
    /// when the RAM was built with dirty tracking. The VM keeps a clone of `ram`.
    pub fn register_memory(&self, ram: &GuestRam) -> Result<(), VmError> {
        let mut mem = self.memory();
        let flags = if ram.track_dirty_pages() || mem.logging {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let maps = ram.host_mappings();
        if maps.len() + mem.slots.len() > self.kvm.get_nr_memslots() {
            return Err(VmError::TooManySlots(self.kvm.get_nr_memslots()));
        }
        mem.rams.push(ram.clone());
        for (region, host) in maps {
            let slot = mem.slots.len() as u32;
            let r = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start.0,
                memory_size: region.size,
                userspace_addr: host,
            };
            // SAFETY: `host..host+size` is a live mapping owned by `ram`'s GuestMemoryMmap,
            // and `mem.rams` holds a clone of `ram` for as long as this VM (and so any vCPU
            // that can reach the slot) exists.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
            mem.slots.push(region);
            mem.hosts.push(host);
        }
        Ok(())
    }

    /// Sets or clears `KVM_MEM_LOG_DIRTY_PAGES` on every slot (see
    /// [`Vm::set_dirty_logging`]).
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        let mut mem = self.memory();
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        for (slot, (region, host)) in mem.slots.iter().zip(&mem.hosts).enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start.0,
                memory_size: region.size,
                userspace_addr: *host,
            };
            // SAFETY: the same slot, guest range and host mapping as registered by
            // `register_memory` (kept alive by `mem.rams`); only the flags change.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (dirty logging)"))?;
        }
        mem.logging = on;
        Ok(())
    }

    /// Every slot's dirty bitmap since the last call (see [`Vm::take_dirty_log`]).
    pub fn take_dirty_log(&self) -> Result<Vec<(RamRegion, Vec<u64>)>, VmError> {
        let slots = self.slots();
        let mut out = Vec::with_capacity(slots.len());
        for (i, region) in slots.into_iter().enumerate() {
            out.push((region, self.dirty_log(i as u32)?));
        }
        Ok(out)
    }

    /// The registered slots (index = slot number).
    pub fn slots(&self) -> Vec<RamRegion> {
        self.memory().slots.clone()
    }

    /// The dirty bitmap of `slot` since the last call (see `virtkit_memory::dirty`).
    pub fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, VmError> {
        let size = self
            .memory()
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

    /// Like [`KvmVm::register_mmio_ioeventfd`] for an I/O port.
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

    /// Creates vCPU `id` (its APIC id) of a VM with `cpus` vCPUs and configures it: CPUID
    /// (KVM's supported set, filtered for this vCPU), the default MSRs, the FPU, and (with an
    /// irqchip) LINT0 ExtINT / LINT1 NMI.
    pub fn create_kvm_vcpu(&self, id: u8, cpus: u8) -> Result<KvmVcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mmap_size = self
            .kvm
            .get_vcpu_mmap_size()
            .map_err(kvm_err("KVM_GET_VCPU_MMAP_SIZE"))?;
        let msr_index_list = self.msr_index_list()?;
        // KVM_CAP_XSAVE2 gives the XSAVE area size; 0 (no cap) means the 4 KiB kvm_xsave.
        let xsave_size = self.fd.check_extension_int(Cap::Xsave2);
        let save = SaveSetup {
            msr_index_list: msr_index_list.clone(),
            irqchip: self.config.irqchip,
            xsave_fits: xsave_size <= 4096,
        };
        let vcpu = KvmVcpu::from_fd(fd, id, mmap_size, save)?;
        vcpu.configure(&VcpuSetup {
            cpuid: self.supported_cpuid()?,
            cpus,
            msr_index_list,
            irqchip: self.config.irqchip,
            tsc_deadline: self.kvm.check_extension(Cap::TscDeadlineTimer),
        })?;
        Ok(vcpu)
    }
}

impl Vm for KvmVm {
    fn max_vcpus(&self) -> usize {
        KvmVm::max_vcpus(self)
    }

    fn register_memory(&self, ram: &GuestRam) -> Result<(), VmError> {
        KvmVm::register_memory(self, ram)
    }

    fn register_irqfd(&self, evt: &EventFd, irq: Irq) -> Result<(), VmError> {
        KvmVm::register_irqfd(self, evt, irq)
    }

    fn register_mmio_ioeventfd(
        &self,
        evt: &EventFd,
        addr: GuestAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        KvmVm::register_mmio_ioeventfd(self, evt, addr, datamatch)
    }

    fn create_vcpu(&self, id: u8, cpus: u8) -> Result<Box<dyn Vcpu>, VcpuError> {
        Ok(Box::new(self.create_kvm_vcpu(id, cpus)?))
    }

    fn save_state(&self) -> Result<VmState, VmError> {
        Ok(VmState::Kvm(Box::new(self.save_kvm_state()?)))
    }

    fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        match state {
            VmState::Kvm(s) => self.restore_kvm_state(s),
            _ => Err(VmError::StateMismatch("the state was not saved from KVM")),
        }
    }

    fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        KvmVm::set_dirty_logging(self, on)
    }

    fn take_dirty_log(&self) -> Result<Vec<(RamRegion, Vec<u64>)>, VmError> {
        KvmVm::take_dirty_log(self)
    }
}
