//! The VM slot behind the API: empty, a config (`vm.create`), or a booted VM with its
//! controller and the thread running it. Every request locks the slot, so requests see
//! and change it one at a time; none waits on the guest for long (stopping a VM is bounded
//! by [`STOP_TIMEOUT`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use virtkit_vcpu::{EventFd, Hypervisor};

use crate::builder::VmmBuilder;
use crate::config::VmConfig;
use crate::control::{ControlError, VmController, VmInfo, VmState};
use crate::vmm::{VmEnd, Vmm, VmmError};

/// How long stopping a VM (`vm.shutdown`, `vm.reboot`, `vm.delete`) may take.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Adjusts each VM's builder before it is built (serial output, start-up hooks).
pub(crate) type Configure = Arc<dyn Fn(VmmBuilder) -> VmmBuilder + Send + Sync>;

/// Why a request on the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// No `vm.create` yet (or the VM is not booted, for `vm.reboot`).
    #[error("the VM is not created")]
    NotCreated,
    /// A second `vm.create`.
    #[error("the VM is already created")]
    AlreadyCreated,
    /// The request needs a booted VM.
    #[error("the VM is not booted")]
    NotBooted,
    /// `vm.boot` on a running VM.
    #[error("the VM is already running")]
    AlreadyRunning,
    /// The VM refused the request (wrong state, a pause that timed out).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The VM could not be built.
    #[error(transparent)]
    Build(VmmError),
    /// The VM did not stop in time.
    #[error("the VM did not stop within {0:?}")]
    StopTimeout(Duration),
    /// The thread that runs the VM could not be started.
    #[error("cannot start the VM thread: {0}")]
    Spawn(std::io::Error),
    /// The VM ended with an error.
    #[error(transparent)]
    Run(VmmError),
    /// The thread running the VM panicked.
    #[error("the VM thread panicked")]
    Panicked,
    /// Receiving a migration failed.
    #[error(transparent)]
    Migration(crate::migration::MigrationError),
}

impl SlotError {
    /// Cloud Hypervisor's status: 404 when there is no VM to act on, 500 otherwise.
    pub(crate) fn status(&self) -> u16 {
        match self {
            SlotError::NotCreated => 404,
            _ => 500,
        }
    }
}

/// A booted VM.
struct Booted {
    config: VmConfig,
    ctl: VmController,
    /// How `run` returned (nothing sent: the thread panicked).
    done: Receiver<Result<VmEnd, VmmError>>,
    /// Set when the API stops the VM, so its end does not end the server.
    api_stop: Arc<AtomicBool>,
}

enum State {
    Empty,
    Created(VmConfig),
    Booted(Booted),
}

/// Tells the server's loop, when a VM thread ends on its own, to look at the slot.
struct WakeOnEnd {
    api_stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl Drop for WakeOnEnd {
    fn drop(&mut self) {
        if !self.api_stop.load(Ordering::SeqCst) {
            if let Err(e) = self.wake.write(1) {
                log::error!("cannot wake the API server: {e}");
            }
        }
    }
}

/// The slot.
pub(crate) struct VmSlot {
    hypervisor: Arc<dyn Hypervisor>,
    configure: Option<Configure>,
    wake: Arc<EventFd>,
    state: Mutex<State>,
}

impl VmSlot {
    /// An empty slot whose VMs run on `hypervisor`; `wake` is written when a VM ends on
    /// its own.
    pub(crate) fn new(
        hypervisor: Arc<dyn Hypervisor>,
        configure: Option<Configure>,
        wake: Arc<EventFd>,
    ) -> Self {
        VmSlot {
            hypervisor,
            configure,
            wake,
            state: Mutex::new(State::Empty),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds a VM from `config` and starts the thread that runs it.
    fn start(&self, config: &VmConfig) -> Result<Booted, SlotError> {
        self.start_with(config, Vmm::builder(config.clone()))
    }

    /// `builder` on this slot's hypervisor, configured as every VM here is.
    fn prepare(&self, builder: VmmBuilder) -> VmmBuilder {
        let builder = builder.hypervisor(self.hypervisor.clone());
        match &self.configure {
            Some(f) => f(builder),
            None => builder,
        }
    }

    fn start_with(&self, config: &VmConfig, builder: VmmBuilder) -> Result<Booted, SlotError> {
        let vmm = self.prepare(builder).build().map_err(SlotError::Build)?;
        self.start_vmm(config, vmm)
    }

    /// Starts the thread that runs `vmm`.
    fn start_vmm(&self, config: &VmConfig, vmm: Vmm) -> Result<Booted, SlotError> {
        let ctl = vmm.controller();
        let api_stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let guard = WakeOnEnd {
            api_stop: api_stop.clone(),
            wake: self.wake.clone(),
        };
        std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || {
                let _guard = guard;
                let _ = tx.send(vmm.run());
            })
            .map_err(SlotError::Spawn)?;
        // vm.boot answers once the vCPUs run (as Cloud Hypervisor's does), so a vm.info
        // right after it says Running.
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while ctl.state() == VmState::Created && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(Booted {
            config: config.clone(),
            ctl,
            done,
            api_stop,
        })
    }

    /// Stops a booted VM and waits (bounded) for its thread to return.
    fn stop(b: &Booted) -> Result<(), SlotError> {
        b.api_stop.store(true, Ordering::SeqCst);
        // Refused only when the VM already ended; its result is waiting then.
        let _ = b.ctl.shutdown();
        match b.done.recv_timeout(STOP_TIMEOUT) {
            Ok(Ok(end)) => log::info!("VM stopped: {end}"),
            Ok(Err(e)) => log::warn!("the VM ended with an error: {e}"),
            Err(RecvTimeoutError::Disconnected) => log::error!("the VM thread panicked"),
            Err(RecvTimeoutError::Timeout) => return Err(SlotError::StopTimeout(STOP_TIMEOUT)),
        }
        Ok(())
    }

    /// `vm.create`: keeps the config; nothing is built yet.
    pub(crate) fn create(&self, config: VmConfig) -> Result<(), SlotError> {
        let mut st = self.lock();
        match *st {
            State::Empty => {
                *st = State::Created(config);
                Ok(())
            }
            _ => Err(SlotError::AlreadyCreated),
        }
    }

    /// Starts `vmm`, built by the caller, as this slot's VM; only when there is no VM.
    pub(crate) fn adopt(&self, vmm: Vmm) -> Result<(), SlotError> {
        let mut st = self.lock();
        if !matches!(&*st, State::Empty) {
            return Err(SlotError::AlreadyCreated);
        }
        let config = vmm.config().clone();
        let booted = self.start_vmm(&config, vmm)?;
        *st = State::Booted(booted);
        Ok(())
    }

    /// `vm.boot`: builds and starts the created VM; on a paused VM, resumes it (as Cloud
    /// Hypervisor does).
    pub(crate) fn boot(&self) -> Result<(), SlotError> {
        let mut st = self.lock();
        match &*st {
            State::Empty => Err(SlotError::NotCreated),
            State::Created(config) => {
                let booted = self.start(config)?;
                *st = State::Booted(booted);
                Ok(())
            }
            State::Booted(b) if b.ctl.state() == VmState::Paused => Ok(b.ctl.resume()?),
            State::Booted(_) => Err(SlotError::AlreadyRunning),
        }
    }

    fn with_booted<T>(
        &self,
        f: impl FnOnce(&VmController) -> Result<T, ControlError>,
    ) -> Result<T, SlotError> {
        match &*self.lock() {
            State::Booted(b) => Ok(f(&b.ctl)?),
            _ => Err(SlotError::NotBooted),
        }
    }

    /// `vm.snapshot`: a paused VM into `dir` (see [`crate::snapshot`]).
    pub(crate) fn snapshot(&self, dir: &std::path::Path) -> Result<(), SlotError> {
        self.with_booted(|c| c.snapshot(dir).map(|_| ()))
    }

    /// `vm.restore`: a VM from the snapshot in `dir`, paused; only when there is no VM.
    pub(crate) fn restore(&self, dir: &std::path::Path) -> Result<(), SlotError> {
        let mut st = self.lock();
        if !matches!(&*st, State::Empty) {
            return Err(SlotError::AlreadyCreated);
        }
        let builder = VmmBuilder::from_snapshot(dir).map_err(SlotError::Build)?;
        let (config, _) = crate::snapshot::read_state(dir)
            .map_err(|e| SlotError::Build(VmmError::Snapshot(e)))?;
        let booted = self.start_with(&config, builder)?;
        *st = State::Booted(booted);
        Ok(())
    }

    /// `vm.send-migration`: the VM moves to the VMM listening at `url`, and ends here.
    pub(crate) fn send_migration(&self, url: &str) -> Result<(), SlotError> {
        self.with_booted(|c| c.send_migration(url).map(|_| ()))
    }

    /// `vm.receive-migration`: waits at `url` for a source, receives its VM and runs it;
    /// only when there is no VM.
    pub(crate) fn receive_migration(&self, url: &str) -> Result<(), SlotError> {
        if !matches!(&*self.lock(), State::Empty) {
            return Err(SlotError::AlreadyCreated);
        }
        // Not holding the slot while waiting for the source: the API stays usable
        // (vmm.shutdown, vm.info) meanwhile.
        let incoming = crate::migration::Incoming::accept_on(url, self.hypervisor.clone())
            .map_err(SlotError::Migration)?;
        let mut st = self.lock();
        if !matches!(&*st, State::Empty) {
            // Refused: the source runs on.
            return Err(SlotError::AlreadyCreated);
        }
        let config = incoming.config().clone();
        let vmm = incoming
            .finish(|b| self.prepare(b).build())
            .map_err(SlotError::Migration)?;
        let booted = self.start_vmm(&config, vmm)?;
        *st = State::Booted(booted);
        Ok(())
    }

    /// `vm.pause`.
    pub(crate) fn pause(&self) -> Result<(), SlotError> {
        self.with_booted(VmController::pause)
    }

    /// `vm.resume`.
    pub(crate) fn resume(&self) -> Result<(), SlotError> {
        self.with_booted(VmController::resume)
    }

    /// `vm.power-button`.
    pub(crate) fn power_button(&self) -> Result<(), SlotError> {
        self.with_booted(VmController::power_button)
    }

    /// `vm.shutdown`: stops the VM and keeps its config, so `vm.boot` starts it again.
    pub(crate) fn shutdown(&self) -> Result<(), SlotError> {
        let mut st = self.lock();
        let State::Booted(b) = &*st else {
            return Err(SlotError::NotBooted);
        };
        Self::stop(b)?;
        *st = State::Created(b.config.clone());
        Ok(())
    }

    /// `vm.reboot`: stops the VM and boots a fresh one from the same config.
    pub(crate) fn reboot(&self) -> Result<(), SlotError> {
        let mut st = self.lock();
        let State::Booted(b) = &*st else {
            return Err(SlotError::NotCreated);
        };
        Self::stop(b)?;
        let config = b.config.clone();
        match self.start(&config) {
            Ok(booted) => {
                *st = State::Booted(booted);
                Ok(())
            }
            Err(e) => {
                *st = State::Created(config);
                Err(e)
            }
        }
    }

    /// `vm.delete` (and `vmm.shutdown`): stops a booted VM and forgets the config.
    pub(crate) fn delete(&self) -> Result<(), SlotError> {
        let mut st = self.lock();
        if let State::Booted(b) = &*st {
            Self::stop(b)?;
        }
        *st = State::Empty;
        Ok(())
    }

    /// `vm.info`.
    pub(crate) fn info(&self) -> Result<VmInfo, SlotError> {
        match &*self.lock() {
            State::Empty => Err(SlotError::NotCreated),
            State::Created(config) => Ok(VmInfo {
                config: config.clone(),
                state: VmState::Created,
                memory_actual_size: config.memory.size,
            }),
            State::Booted(b) => Ok(b.ctl.info()),
        }
    }

    /// How the booted VM ended, once it ended on its own (the guest powered off, reset,
    /// or failed); the slot then holds its config again.
    pub(crate) fn take_ended(&self) -> Option<Result<VmEnd, SlotError>> {
        let mut st = self.lock();
        let State::Booted(b) = &*st else {
            return None;
        };
        if b.api_stop.load(Ordering::SeqCst) {
            return None;
        }
        let ended = match b.done.try_recv() {
            Err(TryRecvError::Empty) => return None,
            Ok(r) => r.map_err(SlotError::Run),
            Err(TryRecvError::Disconnected) => Err(SlotError::Panicked),
        };
        *st = State::Created(b.config.clone());
        Some(ended)
    }
}
