//! [`VmController`]: pause, resume, shut down, press the power button of and inspect a VM
//! from any thread while [`crate::Vmm::run`] runs it (the control API calls these).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtkit_vcpu::VcpuHandle;

use crate::config::VmConfig;
use crate::devices::{ExitNotifier, Ged, GuestExit};

/// How long a pause waits for each vCPU to leave the guest.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A VM's life, with Cloud Hypervisor's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// Running guest code.
    Running,
    /// vCPUs paused.
    Paused,
    /// Ended (the guest or the VMM ended it).
    Shutdown,
}

/// Errors from [`VmController`] requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The request does not apply in this state (pause a paused VM, resume a running one).
    #[error("the VM is {state:?}; {request} needs it {needs}")]
    WrongState {
        /// The request.
        request: &'static str,
        /// The state it was in.
        state: VmState,
        /// The state it needs.
        needs: &'static str,
    },
    /// A vCPU did not pause in time (it was resumed again).
    #[error("vCPU {0} did not pause in time")]
    PauseTimeout(u8),
    /// The power-button interrupt could not be raised.
    #[error("cannot raise the power-button interrupt: {0}")]
    PowerButton(String),
    /// The snapshot failed (the VM stays paused).
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// The migration failed (the VM runs on, or stays paused, as before).
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Work for the event loop's thread (where no device moves meanwhile), and where its answer
/// goes.
pub(crate) enum LoopRequest {
    /// Write a snapshot into the directory.
    Snapshot(
        std::path::PathBuf,
        std::sync::mpsc::Sender<Result<crate::snapshot::SnapshotInfo, String>>,
    ),
    /// Migrate to the URL.
    Migrate(
        String,
        std::sync::mpsc::Sender<
            Result<crate::migration::MigrationInfo, crate::migration::MigrationError>,
        >,
    ),
}

/// What `vm.info` reports (Cloud Hypervisor's `VmInfo`, the fields virtkit has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's configuration.
    pub config: VmConfig,
    /// Its state.
    pub state: VmState,
    /// Guest RAM in bytes.
    pub memory_actual_size: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<VmState>,
    vcpus: Mutex<Vec<VcpuHandle>>,
    exit: ExitNotifier,
    ged: Ged,
    config: VmConfig,
    memory: u64,
    snapshot: Mutex<
        Option<(
            std::sync::mpsc::Sender<LoopRequest>,
            Arc<virtkit_vcpu::EventFd>,
        )>,
    >,
}

/// How long [`VmController::snapshot`] waits for the event loop to write the snapshot.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// A handle on one VM, cheap to clone and usable from any thread.
#[derive(Debug, Clone)]
pub struct VmController {
    inner: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmController {
    pub(crate) fn new(config: VmConfig, memory: u64, exit: ExitNotifier, ged: Ged) -> Self {
        VmController {
            inner: Arc::new(Shared {
                state: Mutex::new(VmState::Created),
                vcpus: Mutex::new(Vec::new()),
                exit,
                ged,
                config,
                memory,
                snapshot: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn set_snapshot_channel(
        &self,
        ch: Option<(
            std::sync::mpsc::Sender<LoopRequest>,
            Arc<virtkit_vcpu::EventFd>,
        )>,
    ) {
        *lock(&self.inner.snapshot) = ch;
    }

    /// Saves each paused vCPU's state, by id (their threads do it).
    pub(crate) fn save_vcpus(&self) -> Result<Vec<virtkit_vcpu::VcpuState>, String> {
        let vcpus = lock(&self.inner.vcpus);
        let mut by_id: Vec<&VcpuHandle> = vcpus.iter().collect();
        by_id.sort_by_key(|h| h.id());
        by_id
            .into_iter()
            .map(|h| h.save_state(PAUSE_TIMEOUT).map_err(|e| e.to_string()))
            .collect()
    }

    /// Writes a snapshot of the paused VM into `dir` (created when missing): its config,
    /// the state of every vCPU and device, its memory and a copy of each disk (see
    /// [`crate::snapshot`]). The VM stays paused; resume it or shut it down after.
    pub fn snapshot(
        &self,
        dir: &std::path::Path,
    ) -> Result<crate::snapshot::SnapshotInfo, ControlError> {
        let state = self.state();
        if state != VmState::Paused {
            return Err(ControlError::WrongState {
                request: "snapshot",
                state,
                needs: "Paused",
            });
        }
        self.ask_loop(
            |reply| LoopRequest::Snapshot(dir.to_path_buf(), reply),
            ControlError::Snapshot,
        )?
        .map_err(ControlError::Snapshot)
    }

    /// Moves the VM, running or paused, to the VMM listening at `url` (`unix:/PATH` or
    /// `tcp:HOST:PORT`) with a pre-copy live migration (see [`crate::migration`]). On
    /// success this VM has ended ([`crate::VmEnd::Migrated`]); on failure it runs on.
    pub fn send_migration(
        &self,
        url: &str,
    ) -> Result<crate::migration::MigrationInfo, ControlError> {
        let state = self.state();
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(ControlError::WrongState {
                request: "send-migration",
                state,
                needs: "Running or Paused",
            });
        }
        self.ask_loop(
            |reply| LoopRequest::Migrate(url.to_string(), reply),
            ControlError::Migration,
        )?
        .map_err(|e| ControlError::Migration(e.to_string()))
    }

    /// Hands a request to the event loop's thread and waits for its answer; `fail` wraps
    /// what went wrong on the way.
    fn ask_loop<T>(
        &self,
        request: impl FnOnce(std::sync::mpsc::Sender<T>) -> LoopRequest,
        fail: fn(String) -> ControlError,
    ) -> Result<T, ControlError> {
        let (tx, evt) = lock(&self.inner.snapshot)
            .clone()
            .ok_or_else(|| fail("the VM's event loop is not running".into()))?;
        let (reply, answer) = std::sync::mpsc::channel();
        tx.send(request(reply))
            .map_err(|_| fail("the VM's event loop has ended".into()))?;
        evt.write(1)
            .map_err(|e| fail(format!("waking the event loop: {e}")))?;
        answer
            .recv_timeout(SNAPSHOT_TIMEOUT)
            .map_err(|e| fail(format!("no answer from the event loop: {e}")))
    }

    /// Ends the VM after it moved away.
    pub(crate) fn end_migrated(&self) {
        self.inner.exit.notify(GuestExit::Migrated);
    }

    pub(crate) fn set_state(&self, s: VmState) {
        *lock(&self.inner.state) = s;
    }

    /// Holds the state while the VM starts: a `pause` (or anything else that reads the
    /// state under its lock) waits until the vCPUs started and the state says so, instead
    /// of finding `Created` while the guest already runs.
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, VmState> {
        lock(&self.inner.state)
    }

    pub(crate) fn set_vcpus(&self, v: Vec<VcpuHandle>) {
        *lock(&self.inner.vcpus) = v;
    }

    pub(crate) fn take_vcpus(&self) -> Vec<VcpuHandle> {
        std::mem::take(&mut *lock(&self.inner.vcpus))
    }

    /// The VM's state now.
    pub fn state(&self) -> VmState {
        *lock(&self.inner.state)
    }

    /// What `vm.info` reports.
    pub fn info(&self) -> VmInfo {
        VmInfo {
            config: self.inner.config.clone(),
            state: self.state(),
            memory_actual_size: self.inner.memory,
        }
    }

    /// Stops every vCPU out of the guest; returns once all are out. Only a running VM.
    pub fn pause(&self) -> Result<(), ControlError> {
        let mut state = lock(&self.inner.state);
        if *state != VmState::Running {
            return Err(ControlError::WrongState {
                request: "pause",
                state: *state,
                needs: "Running",
            });
        }
        let vcpus = lock(&self.inner.vcpus);
        for h in vcpus.iter() {
            if h.pause(PAUSE_TIMEOUT).is_err() {
                for h in vcpus.iter() {
                    h.resume();
                }
                return Err(ControlError::PauseTimeout(h.id()));
            }
        }
        *state = VmState::Paused;
        Ok(())
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut state = lock(&self.inner.state);
        if *state != VmState::Paused {
            return Err(ControlError::WrongState {
                request: "resume",
                state: *state,
                needs: "Paused",
            });
        }
        for h in lock(&self.inner.vcpus).iter() {
            h.resume();
        }
        *state = VmState::Running;
        Ok(())
    }

    /// Ends the VM (as if it powered off); [`crate::Vmm::run`] then returns
    /// [`crate::VmEnd::Shutdown`]. Works running or paused, and on a VM not started yet
    /// (its `run` then ends at once), so a VM being started can always be stopped.
    pub fn shutdown(&self) -> Result<(), ControlError> {
        let state = self.state();
        if state == VmState::Shutdown {
            return Err(ControlError::WrongState {
                request: "shutdown",
                state,
                needs: "Created, Running or Paused",
            });
        }
        self.inner.exit.notify(GuestExit::Shutdown);
        Ok(())
    }

    /// Presses the guest's ACPI power button (through the Generic Event Device); the guest
    /// decides what to do (Linux with systemd-logind or acpid powers off). Running or paused
    /// (a paused guest sees the press when it resumes).
    pub fn power_button(&self) -> Result<(), ControlError> {
        let state = self.state();
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(ControlError::WrongState {
                request: "power-button",
                state,
                needs: "Running or Paused",
            });
        }
        self.inner
            .ged
            .power_button()
            .map_err(|e| ControlError::PowerButton(e.to_string()))
    }
}
