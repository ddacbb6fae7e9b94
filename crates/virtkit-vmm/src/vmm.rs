//! [`Vmm`]: builds a VM from a [`VmConfig`] (memory, VM, devices, boot state, vCPUs) and runs
//! it until the guest or the VMM's user ends it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtkit_boot::LinuxBoot;
use virtkit_memory::{GuestMemoryBuilder, GuestRam};
use virtkit_vcpu::{
    start_vcpu, EventFd, Hypervisor, KvmHypervisor, SystemEvent, ThreadOptions, Vcpu, VcpuError,
    VcpuHandle, VcpuOutcome, Vm,
};

use crate::builder::{max_vcpus, vcpu_count, RestoreMemory, VmmBuilder};
use crate::config::{ConfigError, ConsoleMode, VmConfig};
use crate::control::{VmController, VmState};
use crate::devices::{open_disk, DeviceError, DeviceManager, ExitNotifier, GuestExit, SerialOut};
use crate::event_loop::{ConsoleInput, ExitWatcher, RawTerminal};
use crate::seccomp::{self, Filter, SeccompError, SeccompMode, ThreadKind};
use crate::snapshot::{SnapshotContext, SnapshotError, Snapshotter};

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest memory could not be made.
    #[error("guest memory: {0}")]
    Memory(#[from] virtkit_memory::MemoryError),
    /// The hypervisor refused the VM.
    #[error("creating the VM: {0}")]
    Vm(#[from] virtkit_vcpu::VmError),
    /// A vCPU failed (set-up or run).
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A device could not be added.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The kernel or initramfs could not be loaded.
    #[error("loading the guest: {0}")]
    Boot(#[from] virtkit_boot::BootError),
    /// The serial output file could not be created.
    #[error("cannot create serial file {path}: {error}")]
    SerialFile {
        /// The file.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// An eventfd or the event loop failed.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// A vCPU ended in a way a guest does not end on purpose.
    #[error("vCPU stopped: {0}")]
    VcpuStopped(String),
    /// A snapshot could not be read or does not fit.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The VM ended and nothing said why.
    #[error("VM ended without a reason")]
    NoReason,
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEnd {
    /// ACPI S5 (or a hypervisor shutdown event).
    PowerOff,
    /// i8042 or ACPI reset (or a hypervisor reset event).
    Reboot,
    /// A triple fault: a PC resets.
    TripleFault,
    /// HLT with no irqchip to wake the vCPU.
    Halted,
    /// Ended through [`VmController::shutdown`].
    Shutdown,
    /// Moved to another VMM ([`VmController::send_migration`]).
    Migrated,
}

impl std::fmt::Display for VmEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmEnd::PowerOff => "guest powered off",
            VmEnd::Reboot => "guest rebooted",
            VmEnd::TripleFault => "guest reset (triple fault)",
            VmEnd::Halted => "guest halted",
            VmEnd::Shutdown => "VM shut down on request",
            VmEnd::Migrated => "VM migrated to another VMM",
        })
    }
}

/// A VM built from a [`VmConfig`], ready to [`Vmm::run`].
pub struct Vmm {
    config: VmConfig,
    hypervisor: Arc<dyn Hypervisor>,
    ram: GuestRam,
    vm: Arc<dyn Vm>,
    devices: DeviceManager,
    disks: Vec<(std::path::PathBuf, Arc<dyn virtkit_block::BlockBackend>)>,
    start_paused: bool,
    vcpus: Vec<Box<dyn Vcpu>>,
    exit: ExitNotifier,
    exit_evt: EventFd,
    controller: VmController,
    on_first_run: Option<Box<dyn FnOnce() + Send>>,
    seccomp: SeccompMode,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("config", &self.config)
            .field("hypervisor", &self.hypervisor.name())
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// KVM with the defaults.
impl TryFrom<VmConfig> for Vmm {
    type Error = VmmError;

    fn try_from(config: VmConfig) -> Result<Vmm, VmmError> {
        Vmm::builder(config).build()
    }
}

fn evt() -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::EventLoop(e.to_string()))
}

fn serial_out(config: &VmConfig) -> Result<Option<SerialOut>, VmmError> {
    Ok(match config.serial.mode {
        ConsoleMode::Off => None,
        ConsoleMode::Null => Some(Box::new(std::io::sink())),
        ConsoleMode::Tty => Some(Box::new(std::io::stdout())),
        ConsoleMode::File => {
            let p = config.serial.file.clone().unwrap_or_default();
            let f = std::fs::File::create(&p).map_err(|error| VmmError::SerialFile {
                path: p.display().to_string(),
                error,
            })?;
            Some(Box::new(f))
        }
    })
}

impl Vmm {
    /// A builder for `config` on KVM.
    pub fn builder(config: VmConfig) -> VmmBuilder {
        VmmBuilder {
            config,
            hypervisor: Arc::new(KvmHypervisor::default()),
            serial_out: None,
            on_first_run: None,
            seccomp: crate::seccomp::SeccompMode::Off,
            restore: None,
            resume_after_restore: false,
        }
    }

    pub(crate) fn build(b: VmmBuilder) -> Result<Vmm, VmmError> {
        let config = b.config;
        let mut restore = b.restore;
        let mut prebuilt = restore.as_mut().and_then(|r| r.prebuilt.take());
        let vm = match &prebuilt {
            Some(p) => p.vm.clone(),
            None => b.hypervisor.create_vm()?,
        };
        if restore.is_none() {
            config.validate(u32::try_from(max_vcpus(&*vm)).unwrap_or(u32::MAX))?;
        }
        let cpus = vcpu_count(&config, &*vm)?;
        let mut ram =
            GuestMemoryBuilder::new(config.memory.size).huge_pages(config.memory.huge_pages());
        if let Some(r) = &restore {
            if r.state.vcpus.len() != usize::from(cpus) {
                return Err(SnapshotError::Inconsistent(format!(
                    "{} vCPU states for {cpus} vCPUs",
                    r.state.vcpus.len()
                ))
                .into());
            }
            if let RestoreMemory::File(f) = &r.memory {
                let memory = f.try_clone().map_err(|error| SnapshotError::Io {
                    path: "memory".into(),
                    error,
                })?;
                ram = ram.backing_file(memory);
            }
        }
        let ram = match restore.as_ref().map(|r| &r.memory) {
            Some(RestoreMemory::Ram(ram)) => ram.clone(),
            _ => ram.build()?,
        };
        if prebuilt.is_none() {
            vm.register_memory(&ram)?;
        }

        let exit_evt = evt()?;
        let exit = ExitNotifier::new(
            exit_evt
                .try_clone()
                .map_err(|e| VmmError::EventLoop(e.to_string()))?,
        );
        let mut devices = DeviceManager::new(vm.clone(), ram.memory().clone());
        let out = match b.serial_out {
            Some(o) => Some(o),
            None => serial_out(&config)?,
        };
        if let Some(out) = out {
            let saved = restore
                .as_ref()
                .and_then(|r| r.state.serial.as_ref())
                .map(vm_superio::serial::SerialState::from);
            let port = devices.add_serial_with_state(out, saved.as_ref())?;
            if config.serial.mode == ConsoleMode::Tty {
                devices.add_subscriber(Arc::new(Mutex::new(ConsoleInput { serial: port })));
            }
        }
        devices.add_power_devices(&exit)?;
        let mut disks = Vec::new();
        for (i, d) in config.disks().iter().enumerate() {
            let (blk, backend) = open_disk(i, d)?;
            devices.add_virtio(blk)?;
            disks.push((d.path.clone().unwrap_or_default(), backend));
        }
        // A migration's destination joins the taps its source still holds.
        let shared_taps = restore.as_ref().is_some_and(|r| r.shared_taps);
        for (i, n) in config.nets().iter().enumerate() {
            let spec = n.spec(i)?;
            let net = spec
                .build_sharing(shared_taps)
                .map_err(|e| DeviceError::Net {
                    tap: spec.tap.clone(),
                    why: e.to_string(),
                })?;
            log::info!("net tap={} mac={}", spec.tap, net.mac());
            devices.add_virtio(Arc::new(Mutex::new(net)))?;
        }
        let ged = devices.add_ged()?;

        let vcpus = match &restore {
            Some(r) => {
                devices.restore_virtio(&r.state.virtio)?;
                let mut made = prebuilt
                    .take()
                    .map(|p| p.vcpus)
                    .unwrap_or_default()
                    .into_iter();
                let mut vcpus = Vec::with_capacity(usize::from(cpus));
                for (id, st) in (0..cpus).zip(&r.state.vcpus) {
                    let mut vcpu = match made.next() {
                        Some(v) => v,
                        None => vm.create_vcpu(id, cpus)?,
                    };
                    vcpu.restore_state(st)?;
                    vcpus.push(vcpu);
                }
                vm.restore_state(&r.state.vm)?;
                log::info!("restored {cpus} vCPUs, {} MiB", config.memory.size >> 20);
                vcpus
            }
            None => Self::boot(&config, &ram, &*vm, &devices, cpus)?,
        };
        let controller = VmController::new(config.clone(), ram.size(), exit.clone(), ged);
        Ok(Vmm {
            config,
            hypervisor: b.hypervisor,
            ram,
            vm,
            devices,
            disks,
            start_paused: restore.is_some() && !b.resume_after_restore,
            vcpus,
            exit,
            exit_evt,
            controller,
            on_first_run: b.on_first_run,
            seccomp: b.seccomp,
        })
    }

    /// Loads the kernel, initramfs and boot tables, and creates the vCPUs at the entry.
    fn boot(
        config: &VmConfig,
        ram: &GuestRam,
        vm: &dyn Vm,
        devices: &DeviceManager,
        cpus: u8,
    ) -> Result<Vec<Box<dyn Vcpu>>, VmmError> {
        let mut cmdline = config.cmdline().to_string();
        for extra in devices.cmdline_extra() {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let boot = LinuxBoot {
            kernel: config.payload.kernel.clone().ok_or(ConfigError::NoKernel)?,
            initrd: config.payload.initramfs.clone(),
            cmdline,
            cpus,
            acpi: true,
            acpi_devices: devices.acpi_devices().to_vec(),
        }
        .load(ram)?;
        log::info!(
            "kernel {:?} entry {:#x}, {} vCPUs, {} MiB",
            boot.kernel.kind,
            boot.entry.rip,
            cpus,
            config.memory.size >> 20
        );
        let mut vcpus = Vec::with_capacity(usize::from(cpus));
        for id in 0..cpus {
            let mut vcpu = vm.create_vcpu(id, cpus)?;
            if id == 0 {
                vcpu.set_entry(&boot.entry)?;
            }
            vcpus.push(vcpu);
        }
        Ok(vcpus)
    }

    /// The handle that pauses, resumes, stops and inspects this VM from other threads.
    pub fn controller(&self) -> VmController {
        self.controller.clone()
    }

    /// The config the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The devices (buses, DSDT entries, command-line additions).
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// Starts the vCPUs and runs the event loop until the VM ends; returns how it ended.
    pub fn run(mut self) -> Result<VmEnd, VmmError> {
        let vcpu_exit = evt()?;
        let done = Arc::new(AtomicBool::new(false));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(|e| VmmError::EventLoop(format!("{e:?}")))?;
        let tty = self.config.serial.mode == ConsoleMode::Tty;
        for d in self.devices.take_subscribers() {
            em.add_subscriber(d);
        }
        let clone = |e: &EventFd| {
            e.try_clone()
                .map_err(|e| VmmError::EventLoop(e.to_string()))
        };
        em.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
            fds: vec![clone(&self.exit_evt)?, clone(&vcpu_exit)?],
            done: done.clone(),
        })));
        let snap_evt = Arc::new(evt()?);
        let (snap_tx, snap_rx) = std::sync::mpsc::channel();
        em.add_subscriber(Arc::new(Mutex::new(Snapshotter {
            evt: snap_evt.clone(),
            requests: snap_rx,
            ctx: SnapshotContext {
                config: self.config.clone(),
                ram: self.ram.clone(),
                vm: self.vm.clone(),
                controller: self.controller.clone(),
                serial: self.devices.serial().cloned(),
                virtio: self.devices.virtio_slots(),
                disks: std::mem::take(&mut self.disks),
            },
        })));
        self.controller
            .set_snapshot_channel(Some((snap_tx, snap_evt)));
        let _raw = if tty { RawTerminal::enable() } else { None };

        let buses = Arc::new(self.devices.buses().clone());
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(self.vcpus.len());
        let mut hook = self.on_first_run.take();
        // Start the APs first so the boot vCPU's first run is the last step of start-up.
        let ioctls = self.hypervisor.ioctls();
        let mode = self.seccomp;
        // The guest runs as soon as its vCPUs start: the state stays locked until it
        // says Running (or Paused), so no request sees `Created` meanwhile. The vCPU
        // threads never take this lock. Lock order as in `VmController::pause`: state,
        // then vCPUs.
        let controller = self.controller.clone();
        let mut state = controller.lock_state();
        let started = (|| {
            // Compiled once; each vCPU thread installs it first thing.
            let vcpu_filter = Filter::new(ThreadKind::Vcpu, mode, &ioctls)?;
            for vcpu in std::mem::take(&mut self.vcpus).into_iter().rev() {
                let on_first_run = if vcpu.id() == 0 { hook.take() } else { None };
                let on_start: Option<virtkit_vcpu::ThreadSetup> = vcpu_filter.clone().map(|f| {
                    Box::new(move || f.install().map_err(|e| e.to_string()))
                        as virtkit_vcpu::ThreadSetup
                });
                handles.push(start_vcpu(
                    vcpu,
                    buses.clone(),
                    ThreadOptions {
                        exit_evt: Some(clone(&vcpu_exit)?),
                        on_first_run,
                        on_start,
                        stop_flag: Some(self.exit.stop_flag()),
                        start_paused: self.start_paused,
                    },
                )?);
            }
            // The loop's own filter, once the threads it starts are started.
            seccomp::apply(ThreadKind::Vmm, mode, &ioctls)?;
            Ok::<(), VmmError>(())
        })();
        self.controller.set_vcpus(handles);
        *state = if self.start_paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        drop(state);
        let mut looped = Ok(());
        if started.is_ok() {
            // Interrupts the guest never acknowledged are sent again (see
            // `devices::serial` for why), on a tick of the loop.
            let serial = self.devices.serial().cloned();
            let virtio = self.devices.virtio_slots();
            let tick = crate::devices::serial::RESEND_AFTER;
            let mut next_tick = std::time::Instant::now() + tick;
            while !done.load(Ordering::SeqCst) {
                let wait = next_tick.saturating_duration_since(std::time::Instant::now());
                if let Err(e) = em.run_with_timeout(wait.as_millis().min(1000) as i32) {
                    looped = Err(VmmError::EventLoop(format!("{e:?}")));
                    break;
                }
                let now = std::time::Instant::now();
                if now >= next_tick {
                    next_tick = now + tick;
                    // A paused guest acknowledges nothing: no watchdog then.
                    if self.controller.state() != VmState::Running {
                        continue;
                    }
                    if let Some(s) = &serial {
                        s.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .resend_unacknowledged();
                    }
                    virtio.resend_unacknowledged();
                }
            }
        }
        self.controller.set_snapshot_channel(None);
        let handles = self.controller.take_vcpus();
        for h in &handles {
            h.stop();
        }
        let mut first: Option<Result<VcpuOutcome, VcpuError>> = None;
        for h in handles {
            let r = h.join();
            if first.is_none() && !matches!(r, Ok(VcpuOutcome::Stopped)) {
                first = Some(r);
            }
        }
        self.controller.set_state(VmState::Shutdown);
        started?;
        looped?;
        if let Some(why) = self.exit.reason() {
            return Ok(match why {
                GuestExit::PowerOff => VmEnd::PowerOff,
                GuestExit::Reboot => VmEnd::Reboot,
                GuestExit::Shutdown => VmEnd::Shutdown,
                GuestExit::Migrated => VmEnd::Migrated,
            });
        }
        match first {
            Some(Ok(VcpuOutcome::Shutdown)) => Ok(VmEnd::TripleFault),
            Some(Ok(VcpuOutcome::SystemEvent(SystemEvent::Shutdown))) => Ok(VmEnd::PowerOff),
            Some(Ok(VcpuOutcome::SystemEvent(SystemEvent::Reset))) => Ok(VmEnd::Reboot),
            Some(Ok(VcpuOutcome::Halted)) => Ok(VmEnd::Halted),
            Some(Ok(other)) => Err(VmmError::VcpuStopped(format!("{other:?}"))),
            Some(Err(e)) => Err(e.into()),
            None => Err(VmmError::NoReason),
        }
    }
}
