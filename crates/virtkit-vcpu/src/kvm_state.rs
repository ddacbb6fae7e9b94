//! KVM's half of [`crate::state`]: saving and restoring a vCPU and the VM's in-kernel
//! devices, in the order the kernel needs (Firecracker and Cloud Hypervisor restore in the
//! same order: MP state, registers, XSAVE, XCRs, debug registers, LAPIC, MSRs, events).

use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, Msrs, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

use crate::error::{VcpuError, VmError};
use crate::state::{KvmVcpuState, KvmVmState};
use crate::vcpu::KvmVcpu;
use crate::vm::KvmVm;

/// At most this many MSRs per KVM_GET_MSRS / KVM_SET_MSRS.
const MSR_BATCH: usize = 64;

fn io(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl KvmVcpu {
    fn kerr(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |e| VcpuError::Kvm {
            id,
            what,
            error: io(e),
        }
    }

    fn msrs(entries: &[kvm_msr_entry]) -> Result<Msrs, VcpuError> {
        Msrs::from_entries(entries).map_err(|e| VcpuError::MsrList(format!("{e:?}")))
    }

    /// Reads every MSR KVM lists for saving. An MSR this host cannot read (KVM stops the
    /// batch at it) is left out, so a state never holds a value the host did not give.
    fn save_msrs(&self) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut out = Vec::with_capacity(self.save.msr_index_list.len());
        let mut rest: &[u32] = &self.save.msr_index_list;
        while !rest.is_empty() {
            let take = rest.len().min(MSR_BATCH);
            let want: Vec<kvm_msr_entry> = rest[..take]
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Self::msrs(&want)?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(self.kerr("KVM_GET_MSRS"))?;
            out.extend_from_slice(&msrs.as_slice()[..n.min(take)]);
            // KVM stops at the first MSR it cannot read: skip that one.
            rest = &rest[(n + 1).min(take)..];
            if n >= take {
                continue;
            }
            log::debug!(
                "vCPU {}: MSR {:#x} not saved (KVM cannot read it)",
                self.id,
                want[n].index
            );
        }
        Ok(out)
    }

    pub(crate) fn save_kvm_state(&self) -> Result<KvmVcpuState, VcpuError> {
        if !self.save.xsave_fits {
            return Err(VcpuError::StateMismatch {
                id: self.id,
                why: "this host's XSAVE area is larger than 4 KiB (KVM_GET_XSAVE2 is not supported yet)",
            });
        }
        let tsc_khz = match self.fd.get_tsc_khz() {
            Ok(k) => Some(k),
            Err(e) => {
                log::debug!("vCPU {}: no TSC frequency: {e}", self.id);
                None
            }
        };
        Ok(KvmVcpuState {
            id: self.id,
            mp_state: self
                .fd
                .get_mp_state()
                .map_err(self.kerr("KVM_GET_MP_STATE"))?,
            regs: self.fd.get_regs().map_err(self.kerr("KVM_GET_REGS"))?,
            sregs: self.fd.get_sregs().map_err(self.kerr("KVM_GET_SREGS"))?,
            xsave: self.fd.get_xsave().map_err(self.kerr("KVM_GET_XSAVE"))?,
            xcrs: self.fd.get_xcrs().map_err(self.kerr("KVM_GET_XCRS"))?,
            debugregs: self
                .fd
                .get_debug_regs()
                .map_err(self.kerr("KVM_GET_DEBUGREGS"))?,
            lapic: if self.save.irqchip {
                Some(self.fd.get_lapic().map_err(self.kerr("KVM_GET_LAPIC"))?)
            } else {
                None
            },
            msrs: self.save_msrs()?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(self.kerr("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz,
        })
    }

    pub(crate) fn restore_kvm_state(&self, s: &KvmVcpuState) -> Result<(), VcpuError> {
        let mismatch = |why| VcpuError::StateMismatch { id: self.id, why };
        if s.id != self.id {
            return Err(mismatch("it was saved from another vCPU id"));
        }
        if s.lapic.is_some() != self.save.irqchip {
            return Err(mismatch(
                "the saved VM and this one differ in having an irqchip",
            ));
        }
        if !self.save.xsave_fits {
            return Err(mismatch("this host's XSAVE area is larger than 4 KiB"));
        }
        if let Some(wanted) = s.tsc_khz {
            let host = self.fd.get_tsc_khz().unwrap_or(0);
            if host != wanted {
                self.fd
                    .set_tsc_khz(wanted)
                    .map_err(|e| VcpuError::TscFrequency {
                        id: self.id,
                        wanted,
                        host,
                        error: io(e),
                    })?;
            }
        }
        self.fd
            .set_mp_state(s.mp_state)
            .map_err(self.kerr("KVM_SET_MP_STATE"))?;
        self.fd
            .set_regs(&s.regs)
            .map_err(self.kerr("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(&s.sregs)
            .map_err(self.kerr("KVM_SET_SREGS"))?;
        // SAFETY: KVM's XSAVE area fits `kvm_xsave` on this host (`xsave_fits`: the
        // KVM_CAP_XSAVE2 size is at most 4 KiB), so the kernel reads only inside `s.xsave`.
        unsafe { self.fd.set_xsave(&s.xsave) }.map_err(self.kerr("KVM_SET_XSAVE"))?;
        self.fd
            .set_xcrs(&s.xcrs)
            .map_err(self.kerr("KVM_SET_XCRS"))?;
        self.fd
            .set_debug_regs(&s.debugregs)
            .map_err(self.kerr("KVM_SET_DEBUGREGS"))?;
        if let Some(lapic) = &s.lapic {
            self.fd
                .set_lapic(lapic)
                .map_err(self.kerr("KVM_SET_LAPIC"))?;
        }
        for chunk in s.msrs.chunks(MSR_BATCH) {
            let msrs = Self::msrs(chunk)?;
            let n = self.fd.set_msrs(&msrs).map_err(self.kerr("KVM_SET_MSRS"))?;
            if n != chunk.len() {
                return Err(VcpuError::Msrs {
                    id: self.id,
                    set: n,
                    wanted: chunk.len(),
                });
            }
        }
        self.fd
            .set_vcpu_events(&s.events)
            .map_err(self.kerr("KVM_SET_VCPU_EVENTS"))
    }
}

fn vm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm { what, error: io(e) }
}

impl KvmVm {
    fn irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, VmError> {
        let mut c = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd()
            .get_irqchip(&mut c)
            .map_err(vm_err("KVM_GET_IRQCHIP"))?;
        Ok(c)
    }

    pub(crate) fn save_kvm_state(&self) -> Result<KvmVmState, VmError> {
        if !self.config().irqchip {
            return Err(VmError::StateMismatch(
                "a VM without an irqchip has no state to save",
            ));
        }
        let mut clock = self.fd().get_clock().map_err(vm_err("KVM_GET_CLOCK"))?;
        // KVM_SET_CLOCK refuses flags it does not take (TSC_STABLE is informational).
        clock.flags &= !KVM_CLOCK_TSC_STABLE;
        Ok(KvmVmState {
            pic_master: self.irqchip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.irqchip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.irqchip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd().get_pit2().map_err(vm_err("KVM_GET_PIT2"))?,
            clock,
        })
    }

    pub(crate) fn restore_kvm_state(&self, s: &KvmVmState) -> Result<(), VmError> {
        if !self.config().irqchip {
            return Err(VmError::StateMismatch(
                "this VM has no irqchip to restore into",
            ));
        }
        let fd = self.fd();
        fd.set_pit2(&s.pit).map_err(vm_err("KVM_SET_PIT2"))?;
        fd.set_clock(&s.clock).map_err(vm_err("KVM_SET_CLOCK"))?;
        for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            fd.set_irqchip(chip).map_err(vm_err("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
