//! The KVM vCPU: configuration (CPUID, MSRs, FPU, LAPIC), the entry state, and one
//! `KVM_RUN` turned into a [`VmExit`].

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN;
use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET};
use kvm_ioctls::{VcpuExit, VcpuFd};
use virtkit_boot::CpuEntry;

use crate::cpuid::{self, Topology};
use crate::error::{SystemEvent, VcpuError};
use crate::hypervisor::{Kick, Vcpu, VmExit};
use crate::regs;
use crate::state::VcpuState;

fn kvm_err(id: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |error| VcpuError::Kvm {
        id,
        what,
        error: std::io::Error::from_raw_os_error(error.errno()),
    }
}

/// What [`crate::KvmVm::create_kvm_vcpu`] gives a new vCPU.
#[derive(Debug)]
pub(crate) struct VcpuSetup {
    /// KVM's supported CPUID (filtered per vCPU here).
    pub cpuid: CpuId,
    /// vCPUs in the VM.
    pub cpus: u8,
    /// KVM's MSR index list.
    pub msr_index_list: Vec<u32>,
    /// Whether the VM has an in-kernel irqchip.
    pub irqchip: bool,
    /// Whether KVM has KVM_CAP_TSC_DEADLINE_TIMER.
    pub tsc_deadline: bool,
}

/// A KVM vCPU, not yet running.
#[derive(Debug)]
pub struct KvmVcpu {
    pub(crate) fd: VcpuFd,
    pub(crate) id: u8,
    page: Arc<KvmRunPage>,
    /// What saving and restoring need: the MSRs to save, whether there is a LAPIC, and
    /// whether KVM's XSAVE area fits `kvm_xsave` (4 KiB).
    pub(crate) save: SaveSetup,
}

/// What a vCPU's state save needs to know about its VM.
#[derive(Debug, Clone, Default)]
pub(crate) struct SaveSetup {
    pub msr_index_list: Vec<u32>,
    pub irqchip: bool,
    pub xsave_fits: bool,
}

impl KvmVcpu {
    pub(crate) fn from_fd(
        fd: VcpuFd,
        id: u8,
        mmap_size: usize,
        save: SaveSetup,
    ) -> Result<KvmVcpu, VcpuError> {
        let page = KvmRunPage::new(&fd, mmap_size).map_err(|error| VcpuError::Kvm {
            id,
            what: "mmap of kvm_run",
            error,
        })?;
        Ok(KvmVcpu {
            fd,
            id,
            page: Arc::new(page),
            save,
        })
    }

    /// The vCPU id (= APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The vCPU file descriptor, for what this crate does not wrap.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        kvm_err(self.id, what)
    }

    /// Sets CPUID, the default MSRs, the FPU, and (with an irqchip) LINT0 ExtINT / LINT1 NMI.
    pub(crate) fn configure(&self, setup: &VcpuSetup) -> Result<(), VcpuError> {
        let mut cpuid = setup.cpuid.clone();
        cpuid::filter(
            &mut cpuid,
            Topology {
                apic_id: self.id,
                cpus: setup.cpus,
            },
        );
        log::debug!(
            "vCPU {}: KVM_CAP_TSC_DEADLINE_TIMER {}",
            self.id,
            setup.tsc_deadline
        );
        if setup.irqchip && setup.tsc_deadline {
            cpuid::set_tsc_deadline(&mut cpuid);
        }
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.err("KVM_SET_CPUID2"))?;
        let msrs = regs::default_msrs(&setup.msr_index_list)
            .map_err(|e| VcpuError::MsrList(format!("{e:?}")))?;
        let set = self.fd.set_msrs(&msrs).map_err(self.err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                id: self.id,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        self.fd
            .set_fpu(&regs::default_fpu())
            .map_err(self.err("KVM_SET_FPU"))?;
        if setup.irqchip {
            let mut lapic = self.fd.get_lapic().map_err(self.err("KVM_GET_LAPIC"))?;
            regs::set_lint(&mut lapic);
            self.fd
                .set_lapic(&lapic)
                .map_err(self.err("KVM_SET_LAPIC"))?;
        }
        Ok(())
    }

    /// Points the vCPU at a kernel (or test guest) entry: general registers, segments,
    /// descriptor tables, and CR0/CR3/CR4/EFER for long mode or 32-bit protected mode.
    pub fn set_entry(&self, entry: &CpuEntry) -> Result<(), VcpuError> {
        let mut sregs = self.fd.get_sregs().map_err(self.err("KVM_GET_SREGS"))?;
        regs::apply_entry_sregs(entry, &mut sregs);
        self.fd
            .set_sregs(&sregs)
            .map_err(self.err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::entry_regs(entry))
            .map_err(self.err("KVM_SET_REGS"))
    }

    /// Starts the vCPU's thread (see [`crate::start_vcpu`]).
    pub fn start(
        self,
        buses: Arc<crate::Buses>,
        opts: crate::ThreadOptions,
    ) -> Result<crate::VcpuHandle, VcpuError> {
        crate::start_vcpu(Box::new(self), buses, opts)
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u8 {
        self.id
    }

    fn set_entry(&mut self, entry: &CpuEntry) -> Result<(), VcpuError> {
        KvmVcpu::set_entry(self, entry)
    }

    fn run(&mut self) -> Result<VmExit<'_>, VcpuError> {
        let id = self.id;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VmExit::Interrupted)
            }
            Err(e) => return Err(kvm_err(id, "KVM_RUN")(e)),
        };
        Ok(match exit {
            VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
            VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
            VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
            VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
            VcpuExit::Hlt => VmExit::Halt,
            VcpuExit::Shutdown => VmExit::Shutdown,
            VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                other => SystemEvent::Other(other),
            }),
            VcpuExit::FailEntry(reason, cpu) => VmExit::FailEntry { reason, cpu },
            VcpuExit::InternalError => VmExit::InternalError {
                // The exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
                // member of the exit union; its first field is the sub-error.
                suberror: self.page.read_u32(std::mem::offset_of!(
                    kvm_bindings::kvm_run,
                    __bindgen_anon_1
                )),
            },
            VcpuExit::IrqWindowOpen | VcpuExit::Intr => VmExit::Interrupted,
            other => {
                log::debug!("vCPU {id}: unhandled exit {other:?}");
                VmExit::Unhandled(format!("{other:?}"))
            }
        })
    }

    fn kicker(&self) -> Result<Arc<dyn Kick>, VcpuError> {
        Ok(self.page.clone())
    }

    fn save_state(&self) -> Result<VcpuState, VcpuError> {
        Ok(VcpuState::Kvm(Box::new(self.save_kvm_state()?)))
    }

    fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        match state {
            VcpuState::Kvm(s) => self.restore_kvm_state(s),
            _ => Err(VcpuError::StateMismatch {
                id: self.id,
                why: "the state was not saved from KVM",
            }),
        }
    }
}

/// Our own mapping of a vCPU's `kvm_run` page, for `immediate_exit` (from any thread) and
/// for exit details the run borrow hides. The mapping holds a reference to the vCPU file,
/// so it stays valid however long it lives, even after the vCPU itself is closed.
#[derive(Debug)]
struct KvmRunPage {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory touched only through atomic byte accesses.
unsafe impl Send for KvmRunPage {}
// SAFETY: as above.
unsafe impl Sync for KvmRunPage {}

impl KvmRunPage {
    fn new(fd: &VcpuFd, len: usize) -> std::io::Result<KvmRunPage> {
        let offset = std::mem::offset_of!(kvm_bindings::kvm_run, immediate_exit);
        if len < std::mem::size_of::<kvm_bindings::kvm_run>() || offset >= len {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh shared mapping of the vCPU file at offset 0 (the kvm_run area);
        // the kernel picks the address, so nothing of ours is replaced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(KvmRunPage { base, len })
    }

    /// A volatile read of the u32 at `offset` (0 when out of range).
    fn read_u32(&self, offset: usize) -> u32 {
        if offset.checked_add(4).is_none_or(|end| end > self.len) || offset % 4 != 0 {
            return 0;
        }
        // SAFETY: in range and aligned (checked above; the mapping is page-aligned), and
        // the mapping lives until `drop`.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    fn flag(&self) -> &AtomicU8 {
        let offset = std::mem::offset_of!(kvm_bindings::kvm_run, immediate_exit);
        // SAFETY: `offset < len` (checked in `new`), the mapping lives until `drop`, and
        // the byte is only ever accessed atomically by us (the kernel reads it on entry).
        unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(offset)) }
    }
}

impl Kick for KvmRunPage {
    fn set_immediate_exit(&self, on: bool) {
        self.flag().store(u8::from(on), Ordering::SeqCst);
    }
}

impl Drop for KvmRunPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses afterwards.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
