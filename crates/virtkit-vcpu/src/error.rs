//! The error and outcome types shared by the hypervisor traits and their implementations.

/// Errors from VM setup.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(std::io::Error),
    /// A capability the VMM needs is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// An ioctl failed.
    #[error("{what}: {error}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// A saved state that does not fit this VM.
    #[error("cannot restore the VM state: {0}")]
    StateMismatch(&'static str),
    /// More memory regions than KVM has slots.
    #[error("guest memory has more regions than KVM's {0} slots")]
    TooManySlots(usize),
}

/// Errors from vCPU setup and running.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A hypervisor call failed.
    #[error("vCPU {id}: {what}: {error}")]
    Kvm {
        /// vCPU id.
        id: u8,
        /// What was being done.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// KVM set fewer MSRs than asked.
    #[error("vCPU {id}: KVM set {set} of {wanted} MSRs")]
    Msrs {
        /// vCPU id.
        id: u8,
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// The MSR list could not be built.
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
    /// VM-level failure while configuring.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The thread could not be spawned.
    #[error("cannot spawn vCPU thread: {0}")]
    Spawn(std::io::Error),
    /// The thread's set-up step ([`crate::ThreadOptions::on_start`]) failed.
    #[error("vCPU {id}: thread set-up: {why}")]
    ThreadSetup {
        /// vCPU id.
        id: u8,
        /// What failed.
        why: String,
    },
    /// The vCPU thread panicked.
    #[error("vCPU {0} thread panicked")]
    Panicked(u8),
    /// The vCPU did not acknowledge a pause in time.
    #[error("vCPU {0} did not pause in time")]
    PauseTimeout(u8),
    /// A saved state that does not fit this vCPU.
    #[error("vCPU {id}: cannot restore the state: {why}")]
    StateMismatch {
        /// vCPU id.
        id: u8,
        /// Why.
        why: &'static str,
    },
    /// The host cannot run the guest at the TSC frequency it was saved at.
    #[error("vCPU {id}: the guest ran with a TSC of {wanted} kHz and this host cannot set it (it runs at {host} kHz): {error}")]
    TscFrequency {
        /// vCPU id.
        id: u8,
        /// The saved frequency.
        wanted: u32,
        /// This host's.
        host: u32,
        /// The error setting it.
        error: std::io::Error,
    },
    /// A state save was asked of a vCPU that is not paused.
    #[error("vCPU {0} must be paused to save its state")]
    NotPaused(u8),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(std::io::Error),
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuOutcome {
    /// The guest executed HLT (only exits without an in-kernel irqchip).
    Halted,
    /// Triple fault or similar (KVM_EXIT_SHUTDOWN); a reset for a PC.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown, reset or crash).
    SystemEvent(SystemEvent),
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused the guest state.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// The physical CPU.
        cpu: u32,
    },
    /// KVM_EXIT_INTERNAL_ERROR (for example an instruction KVM cannot emulate).
    InternalError {
        /// KVM's suberror code.
        suberror: u32,
    },
    /// Stopped on request ([`crate::VcpuHandle::stop`]).
    Stopped,
    /// An exit this run loop does not handle.
    Unhandled(String),
}

/// Kinds of KVM_EXIT_SYSTEM_EVENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest asked to power off.
    Shutdown,
    /// The guest asked to reset.
    Reset,
    /// The guest crashed.
    Crash,
    /// Another event type.
    Other(u32),
}
