//! A hypervisor double for tests (feature `test-utils`): its vCPUs replay a script of
//! exits, and its VMs record what a VMM asked of them (memory, irqfds, ioeventfds,
//! vCPUs), so device managers and VMM lifecycles run without `/dev/kvm`.
//!
//! ```
//! use std::sync::Arc;
//! use virtkit_vcpu::fake::{FakeHypervisor, ScriptedExit};
//! use virtkit_vcpu::{run_once, Buses, Hypervisor, VcpuOutcome};
//!
//! let hv = FakeHypervisor::default();
//! hv.script(0, vec![ScriptedExit::IoOut { port: 0x80, data: vec![1] }, ScriptedExit::Halt]);
//! let vm = hv.create_vm().unwrap();
//! let mut vcpu = vm.create_vcpu(0, 1).unwrap();
//! let buses = Buses::default();
//! assert_eq!(run_once(&mut *vcpu, &buses).unwrap(), None);
//! assert_eq!(run_once(&mut *vcpu, &buses).unwrap(), Some(VcpuOutcome::Halted));
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use virtkit_boot::CpuEntry;
use virtkit_memory::{GuestAddress, GuestRam, Irq};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{SystemEvent, VcpuError, VmError};
use crate::hypervisor::{Hypervisor, Kick, Vcpu, Vm, VmExit};
use crate::state::{VcpuState, VmState};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Values returned for scripted reads: (vCPU, port or address, bytes).
type ReadLog = Arc<Mutex<Vec<(u8, u64, Vec<u8>)>>>;

/// One step of a fake vCPU's script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedExit {
    /// `out` of `data` to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// `in` of `len` bytes from `port` (the value is recorded, see [`FakeVm::reads`]).
    IoIn {
        /// The port.
        port: u16,
        /// Access size.
        len: usize,
    },
    /// MMIO write.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// MMIO read (the value is recorded, see [`FakeVm::reads`]).
    MmioRead {
        /// Guest physical address.
        addr: u64,
        /// Access size.
        len: usize,
    },
    /// HLT.
    Halt,
    /// Triple fault.
    Shutdown,
    /// A platform event.
    SystemEvent(SystemEvent),
    /// The hypervisor fails to handle the guest.
    InternalError {
        /// Sub-error code.
        suberror: u32,
    },
    /// The run itself fails (an ioctl error).
    Fail,
    /// The guest runs for this long without exiting (a kick ends it early).
    Run(Duration),
}

/// A fake hypervisor. Scripts set with [`FakeHypervisor::script`] go to the vCPUs of the
/// next VMs; every VM made is kept for inspection ([`FakeHypervisor::vms`]).
#[derive(Debug, Default)]
pub struct FakeHypervisor {
    scripts: Mutex<HashMap<u8, Vec<ScriptedExit>>>,
    vms: Mutex<Vec<Arc<FakeVm>>>,
    fail_create: bool,
}

impl FakeHypervisor {
    /// A hypervisor whose `create_vm` fails (a host without it).
    pub fn refusing() -> Self {
        FakeHypervisor {
            fail_create: true,
            ..FakeHypervisor::default()
        }
    }

    /// Sets the script vCPU `id` replays. Once a script ends, the vCPU behaves like a guest
    /// that runs on without exits until it is kicked.
    pub fn script(&self, id: u8, exits: Vec<ScriptedExit>) {
        lock(&self.scripts).insert(id, exits);
    }

    /// The VMs made so far.
    pub fn vms(&self) -> Vec<Arc<FakeVm>> {
        lock(&self.vms).clone()
    }
}

impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>, VmError> {
        if self.fail_create {
            return Err(VmError::MissingCap("fake: create_vm refused"));
        }
        let vm = Arc::new(FakeVm {
            scripts: lock(&self.scripts).clone(),
            state: Mutex::new(FakeVmState::default()),
        });
        lock(&self.vms).push(vm.clone());
        Ok(vm)
    }
}

#[derive(Debug, Default)]
struct FakeVmState {
    memory: Vec<GuestRam>,
    irqfds: Vec<(Irq, EventFd)>,
    ioeventfds: Vec<(GuestAddress, Option<u32>, EventFd)>,
    vcpus: Vec<(u8, u8)>,
    reads: ReadLog,
}

/// A fake VM that records what it was asked.
#[derive(Debug)]
pub struct FakeVm {
    scripts: HashMap<u8, Vec<ScriptedExit>>,
    state: Mutex<FakeVmState>,
}

impl FakeVm {
    /// RAM registered, in order.
    pub fn memory(&self) -> Vec<GuestRam> {
        lock(&self.state).memory.clone()
    }

    /// Lines with an irqfd, in order.
    pub fn irqfds(&self) -> Vec<Irq> {
        lock(&self.state).irqfds.iter().map(|(i, _)| *i).collect()
    }

    /// How many times the irqfd of `irq` was signalled since the last call (reads it).
    pub fn irq_count(&self, irq: Irq) -> u64 {
        let st = lock(&self.state);
        st.irqfds
            .iter()
            .filter(|(i, _)| *i == irq)
            .map(|(_, e)| e.read().unwrap_or(0))
            .sum()
    }

    /// MMIO ioeventfds: address and datamatch, in order.
    pub fn ioeventfds(&self) -> Vec<(GuestAddress, Option<u32>)> {
        lock(&self.state)
            .ioeventfds
            .iter()
            .map(|(a, d, _)| (*a, *d))
            .collect()
    }

    /// vCPUs created: (id, cpus).
    pub fn vcpus(&self) -> Vec<(u8, u8)> {
        lock(&self.state).vcpus.clone()
    }

    /// Values the VMM returned for scripted reads: (vCPU, port or address, bytes).
    pub fn reads(&self) -> Vec<(u8, u64, Vec<u8>)> {
        lock(&lock(&self.state).reads).clone()
    }
}

impl Vm for FakeVm {
    fn max_vcpus(&self) -> usize {
        8
    }

    fn register_memory(&self, ram: &GuestRam) -> Result<(), VmError> {
        lock(&self.state).memory.push(ram.clone());
        Ok(())
    }

    fn register_irqfd(&self, evt: &EventFd, irq: Irq) -> Result<(), VmError> {
        let evt = evt.try_clone().map_err(|error| VmError::Kvm {
            what: "fake irqfd",
            error,
        })?;
        lock(&self.state).irqfds.push((irq, evt));
        Ok(())
    }

    fn register_mmio_ioeventfd(
        &self,
        evt: &EventFd,
        addr: GuestAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let evt = evt.try_clone().map_err(|error| VmError::Kvm {
            what: "fake ioeventfd",
            error,
        })?;
        lock(&self.state).ioeventfds.push((addr, datamatch, evt));
        Ok(())
    }

    fn save_state(&self) -> Result<VmState, VmError> {
        Ok(VmState::Fake)
    }

    fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        match state {
            VmState::Fake => Ok(()),
            _ => Err(VmError::StateMismatch("not a fake VM's state")),
        }
    }

    fn set_dirty_logging(&self, _on: bool) -> Result<(), VmError> {
        Ok(())
    }

    /// Fake vCPUs never write guest memory: every bitmap is clear.
    fn take_dirty_log(&self) -> Result<Vec<(virtkit_memory::RamRegion, Vec<u64>)>, VmError> {
        let st = lock(&self.state);
        Ok(st
            .memory
            .iter()
            .flat_map(|ram| ram.regions().to_vec())
            .map(|r| {
                (
                    r,
                    vec![0u64; r.size.div_ceil(virtkit_memory::PAGE_SIZE * 64) as usize],
                )
            })
            .collect())
    }

    fn create_vcpu(&self, id: u8, cpus: u8) -> Result<Box<dyn Vcpu>, VcpuError> {
        let mut st = lock(&self.state);
        st.vcpus.push((id, cpus));
        Ok(Box::new(FakeVcpu {
            id,
            script: self.scripts.get(&id).cloned().unwrap_or_default().into(),
            buf: Vec::new(),
            pending_read: None,
            reads: st.reads.clone(),
            kick: Arc::new(FakeKick::default()),
            entry: None,
            position: 0,
        }))
    }
}

/// The fake's kick: a flag with a condition variable, so an idle fake vCPU sleeps.
#[derive(Debug, Default)]
struct FakeKick {
    on: Mutex<bool>,
    cv: Condvar,
}

impl Kick for FakeKick {
    fn set_immediate_exit(&self, on: bool) {
        *lock(&self.on) = on;
        self.cv.notify_all();
    }
}

impl FakeKick {
    /// Waits until kicked or `d` passed; true when kicked.
    fn wait(&self, d: Duration) -> bool {
        let g = lock(&self.on);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |on| !*on)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// A fake vCPU replaying its script.
#[derive(Debug)]
pub struct FakeVcpu {
    id: u8,
    script: VecDeque<ScriptedExit>,
    buf: Vec<u8>,
    pending_read: Option<u64>,
    reads: ReadLog,
    kick: Arc<FakeKick>,
    entry: Option<CpuEntry>,
    /// Script steps replayed so far (what a saved state records).
    position: u64,
}

impl Vcpu for FakeVcpu {
    fn id(&self) -> u8 {
        self.id
    }

    fn set_entry(&mut self, entry: &CpuEntry) -> Result<(), VcpuError> {
        self.entry = Some(entry.clone());
        Ok(())
    }

    fn run(&mut self) -> Result<VmExit<'_>, VcpuError> {
        if let Some(addr) = self.pending_read.take() {
            lock(&self.reads).push((self.id, addr, self.buf.clone()));
        }
        if *lock(&self.kick.on) {
            return Ok(VmExit::Interrupted);
        }
        let Some(step) = self.script.pop_front() else {
            // The guest runs on: wake up now and then, or when kicked.
            self.kick.wait(Duration::from_millis(20));
            return Ok(VmExit::Interrupted);
        };
        self.position += 1;
        Ok(match step {
            ScriptedExit::IoOut { port, data } => {
                self.buf = data;
                VmExit::IoOut {
                    port,
                    data: &self.buf,
                }
            }
            ScriptedExit::IoIn { port, len } => {
                self.buf = vec![0; len];
                self.pending_read = Some(u64::from(port));
                VmExit::IoIn {
                    port,
                    data: &mut self.buf,
                }
            }
            ScriptedExit::MmioWrite { addr, data } => {
                self.buf = data;
                VmExit::MmioWrite {
                    addr,
                    data: &self.buf,
                }
            }
            ScriptedExit::MmioRead { addr, len } => {
                self.buf = vec![0; len];
                self.pending_read = Some(addr);
                VmExit::MmioRead {
                    addr,
                    data: &mut self.buf,
                }
            }
            ScriptedExit::Halt => VmExit::Halt,
            ScriptedExit::Shutdown => VmExit::Shutdown,
            ScriptedExit::SystemEvent(e) => VmExit::SystemEvent(e),
            ScriptedExit::InternalError { suberror } => VmExit::InternalError { suberror },
            ScriptedExit::Fail => {
                return Err(VcpuError::Kvm {
                    id: self.id,
                    what: "KVM_RUN (fake)",
                    error: std::io::Error::from_raw_os_error(libc::EFAULT),
                })
            }
            ScriptedExit::Run(d) => {
                self.kick.wait(d);
                VmExit::Interrupted
            }
        })
    }

    fn kicker(&self) -> Result<Arc<dyn Kick>, VcpuError> {
        Ok(self.kick.clone())
    }

    fn save_state(&self) -> Result<VcpuState, VcpuError> {
        Ok(VcpuState::Fake {
            id: self.id,
            position: self.position,
        })
    }

    /// Resumes the script where the saved vCPU was: drops the steps it had replayed.
    fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        match state {
            VcpuState::Fake { id, position } if *id == self.id => {
                for _ in self.position..*position {
                    self.script.pop_front();
                }
                self.position = self.position.max(*position);
                Ok(())
            }
            _ => Err(VcpuError::StateMismatch {
                id: self.id,
                why: "not this fake vCPU's state",
            }),
        }
    }
}
