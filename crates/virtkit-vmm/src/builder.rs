//! [`VmmBuilder`]: what a [`Vmm`] is built from beyond its [`VmConfig`] (hypervisor, serial
//! output, start-up hook), and the restore paths (a snapshot, a migration) that build it
//! from saved state.

use std::sync::Arc;

use virtkit_memory::GuestRam;
use virtkit_vcpu::{Hypervisor, Vcpu, Vm};

use crate::config::{ConfigError, VmConfig};
use crate::devices::SerialOut;
use crate::seccomp::SeccompMode;
use crate::snapshot::{MachineState, SnapshotError};
use crate::vmm::{Vmm, VmmError};

/// Builds a [`Vmm`] with options beyond the [`VmConfig`].
pub struct VmmBuilder {
    pub(crate) config: VmConfig,
    pub(crate) hypervisor: Arc<dyn Hypervisor>,
    pub(crate) serial_out: Option<SerialOut>,
    pub(crate) on_first_run: Option<Box<dyn FnOnce() + Send>>,
    pub(crate) restore: Option<Restore>,
    pub(crate) resume_after_restore: bool,
    pub(crate) seccomp: SeccompMode,
}

/// What a restore brings: the saved machine state and the guest memory.
pub(crate) struct Restore {
    pub(crate) state: MachineState,
    pub(crate) memory: RestoreMemory,
    /// The VM (memory registered) and vCPUs, made before the state arrived.
    pub(crate) prebuilt: Option<Prebuilt>,
    /// Join taps another process holds (a migration's source on the same host:
    /// `virtkit_net::tap_share`).
    pub(crate) shared_taps: bool,
}

/// A VM with its guest memory registered and its vCPUs created, made ahead of a migration's
/// last frame so the downtime does not include them ([`prebuild`]).
pub(crate) struct Prebuilt {
    pub(crate) vm: Arc<dyn Vm>,
    pub(crate) vcpus: Vec<Box<dyn Vcpu>>,
}

/// Creates the VM of `config` on `hv` with `ram` registered, and its vCPUs.
pub(crate) fn prebuild(
    hv: &Arc<dyn Hypervisor>,
    config: &VmConfig,
    ram: &GuestRam,
) -> Result<Prebuilt, VmmError> {
    let vm = hv.create_vm()?;
    let cpus = vcpu_count(config, &*vm)?;
    vm.register_memory(ram)?;
    let vcpus = (0..cpus)
        .map(|id| vm.create_vcpu(id, cpus))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prebuilt { vm, vcpus })
}

/// The most vCPUs `vm` and the boot tables allow.
pub(crate) fn max_vcpus(vm: &dyn Vm) -> usize {
    vm.max_vcpus()
        .min(usize::from(virtkit_boot::mptable::MAX_CPUS))
}

/// The config's vCPU count, within [`max_vcpus`].
pub(crate) fn vcpu_count(config: &VmConfig, vm: &dyn Vm) -> Result<u8, VmmError> {
    let max = max_vcpus(vm);
    u8::try_from(config.cpus.boot_vcpus)
        .ok()
        .filter(|c| usize::from(*c) <= max)
        .ok_or_else(|| {
            ConfigError::Cpus {
                got: config.cpus.boot_vcpus,
                max: max as u32,
            }
            .into()
        })
}

/// Where restored guest memory comes from.
pub(crate) enum RestoreMemory {
    /// A snapshot's memory file, mapped copy-on-write.
    File(std::fs::File),
    /// RAM already filled (by a migration).
    Ram(GuestRam),
}

impl std::fmt::Debug for VmmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmBuilder")
            .field("config", &self.config)
            .field("hypervisor", &self.hypervisor)
            .finish_non_exhaustive()
    }
}

impl VmmBuilder {
    /// Runs the VM on `hv` instead of KVM.
    pub fn hypervisor(mut self, hv: Arc<dyn Hypervisor>) -> Self {
        self.hypervisor = hv;
        self
    }

    /// Sends COM1's output to `out` instead of what the config's serial mode says.
    pub fn serial_output(mut self, out: SerialOut) -> Self {
        self.serial_out = Some(out);
        self
    }

    /// Calls `f` on the boot vCPU's thread right before it first enters the guest.
    pub fn on_first_run(mut self, f: Box<dyn FnOnce() + Send>) -> Self {
        self.on_first_run = Some(f);
        self
    }

    /// Installs the seccomp filters of [`crate::seccomp`] in `mode` when the VM runs: each
    /// vCPU thread's first, then the event loop's on the thread that called
    /// [`Vmm::run`] (which can then make only the loop's calls). Off by default.
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }

    /// A builder that restores the snapshot in `dir` (see [`crate::snapshot`]), on KVM
    /// unless [`VmmBuilder::hypervisor`] says otherwise. Each disk gets a fresh working copy
    /// of the snapshot's image under `dir/run-PID-N/`, so the snapshot can be restored
    /// again; memory is mapped from `dir/memory` copy-on-write. The VM comes back paused:
    /// [`crate::VmController::resume`] it.
    pub fn from_snapshot(dir: &std::path::Path) -> Result<VmmBuilder, VmmError> {
        let (mut config, state) = crate::snapshot::read_state(dir)?;
        let mem_path = dir.join("memory");
        let memory = std::fs::File::open(&mem_path).map_err(|error| SnapshotError::Io {
            path: mem_path.clone(),
            error,
        })?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let work = dir.join(format!("run-{}-{stamp}", std::process::id()));
        if !state.disks.is_empty() {
            std::fs::create_dir_all(&work).map_err(|error| SnapshotError::Io {
                path: work.clone(),
                error,
            })?;
        }
        if let Some(disks) = config.disks.as_mut() {
            for (d, name) in disks.iter_mut().zip(&state.disks) {
                let copy = work.join(name);
                crate::snapshot::sparse_copy(&dir.join(name), &copy)?;
                d.path = Some(copy);
            }
        }
        let mut b = Vmm::builder(config);
        b.restore = Some(Restore {
            state,
            memory: RestoreMemory::File(memory),
            prebuilt: None,
            shared_taps: false,
        });
        Ok(b)
    }

    /// A builder for a VM received by a migration: `ram` already holds its memory. The VM
    /// runs as soon as it starts.
    pub(crate) fn from_migration(
        config: VmConfig,
        state: MachineState,
        ram: GuestRam,
        prebuilt: Option<Prebuilt>,
    ) -> Self {
        let mut b = Vmm::builder(config);
        b.restore = Some(Restore {
            state,
            memory: RestoreMemory::Ram(ram),
            prebuilt,
            shared_taps: true,
        });
        b.resume_after_restore = true;
        b
    }

    /// A restored VM runs as soon as [`Vmm::run`] starts it, instead of coming back paused.
    pub fn resume_after_restore(mut self) -> Self {
        self.resume_after_restore = true;
        self
    }

    /// Validates the config and builds the VM: memory, VM, devices, boot state, vCPUs.
    pub fn build(self) -> Result<Vmm, VmmError> {
        Vmm::build(self)
    }
}
