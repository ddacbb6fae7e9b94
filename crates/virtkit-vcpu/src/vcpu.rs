//! vCPUs: configuration, the run loop, and one thread per vCPU with pause, resume and stop.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use virtkit_boot::CpuEntry;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Buses;
use crate::cpuid::{self, Topology};
use crate::regs;
use crate::vm::{Vm, VmError};

/// Errors from vCPU setup and running.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// An ioctl failed.
    #[error("vCPU {id}: {what}: {error}")]
    Kvm {
        /// vCPU id.
        id: u8,
        /// What was being done.
        what: &'static str,
        /// The error.
        error: kvm_ioctls::Error,
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
    /// The vCPU thread panicked.
    #[error("vCPU {0} thread panicked")]
    Panicked(u8),
    /// The vCPU did not acknowledge a pause in time.
    #[error("vCPU {0} did not pause in time")]
    PauseTimeout(u8),
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
    /// Stopped on request ([`VcpuHandle::stop`]).
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

/// A vCPU, not yet running.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

impl Vcpu {
    pub(crate) fn from_fd(fd: VcpuFd, id: u8) -> Vcpu {
        Vcpu { fd, id }
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
        let id = self.id;
        move |error| VcpuError::Kvm { id, what, error }
    }

    /// Sets CPUID (KVM's supported set, filtered for this vCPU in a VM of `cpus` vCPUs), the
    /// default MSRs, the FPU, and (with an irqchip) LINT0 ExtINT / LINT1 NMI.
    pub fn configure(&self, vm: &Vm, cpus: u8) -> Result<(), VcpuError> {
        let mut cpuid = vm.supported_cpuid()?;
        cpuid::filter(
            &mut cpuid,
            Topology {
                apic_id: self.id,
                cpus,
            },
        );
        let tsc_deadline = vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        log::debug!(
            "vCPU {}: KVM_CAP_TSC_DEADLINE_TIMER {tsc_deadline}",
            self.id
        );
        if vm.config().irqchip && tsc_deadline {
            cpuid::set_tsc_deadline(&mut cpuid);
        }
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.err("KVM_SET_CPUID2"))?;
        let msrs = regs::default_msrs(&vm.msr_index_list()?)
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
        if vm.config().irqchip {
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

    /// Runs the vCPU once and dispatches the exit. `Ok(None)`: keep running (I/O handled, or
    /// interrupted by a kick); `Ok(Some(_))`: the vCPU is done.
    pub fn run_once(&mut self, buses: &Buses) -> Result<Option<VcpuOutcome>, VcpuError> {
        let id = self.id;
        let outcome = match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    if !buses.pio.read(u64::from(port), data) {
                        log::trace!("vCPU {id}: unhandled in {port:#x}");
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    if !buses.pio.write(u64::from(port), data) {
                        log::trace!("vCPU {id}: unhandled out {port:#x} {data:x?}");
                    }
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !buses.mmio.read(addr, data) {
                        log::debug!("vCPU {id}: unhandled MMIO read {addr:#x}");
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !buses.mmio.write(addr, data) {
                        log::debug!("vCPU {id}: unhandled MMIO write {addr:#x} {data:x?}");
                    }
                    None
                }
                VcpuExit::Hlt => Some(VcpuOutcome::Halted),
                VcpuExit::Shutdown => Some(VcpuOutcome::Shutdown),
                VcpuExit::SystemEvent(kind, _) => Some(VcpuOutcome::SystemEvent(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                    KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                    other => SystemEvent::Other(other),
                })),
                VcpuExit::FailEntry(reason, cpu) => Some(VcpuOutcome::FailEntry { reason, cpu }),
                VcpuExit::InternalError => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the exit union.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal }.suberror;
                    Some(VcpuOutcome::InternalError { suberror })
                }
                VcpuExit::IrqWindowOpen | VcpuExit::Intr => None,
                other => Some(VcpuOutcome::Unhandled(format!("{other:?}"))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => return Err(self.err("KVM_RUN")(e)),
        };
        Ok(outcome)
    }

    /// Starts the vCPU's thread. It runs until an outcome, or until stopped.
    pub fn start(
        mut self,
        buses: Arc<Buses>,
        opts: ThreadOptions,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let id = self.id;
        let run = self.fd.get_kvm_run();
        // SAFETY: `immediate_exit` is a u8 field of the mmapped kvm_run page, which stays mapped
        // until `self.fd` is dropped; `Control::kick` only touches it while `exited` is false,
        // and the thread sets `exited` (under the same lock) before dropping the fd.
        let imm: *mut u8 = &mut run.immediate_exit;
        let control = Arc::new(Control {
            state: Mutex::new(ControlState::default()),
            cv: Condvar::new(),
            immediate_exit: AtomicPtr::new(imm),
        });
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                c.lock().tid = Some(current_thread());
                c.cv.notify_all();
                let result = self.run_loop(&buses, &c, opts.on_first_run, opts.stop_flag);
                {
                    let mut st = c.lock();
                    st.exited = true;
                    c.cv.notify_all();
                }
                drop(self);
                if let Some(evt) = opts.exit_evt {
                    if let Err(e) = evt.write(1) {
                        log::error!("vCPU {id}: cannot signal exit: {e}");
                    }
                }
                result
            })
            .map_err(VcpuError::Spawn)?;
        // Wait until the thread has published its id, so kicks can reach it.
        {
            let mut st = control.lock();
            while st.tid.is_none() && !st.exited {
                st = control.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        Ok(VcpuHandle {
            id,
            control,
            thread: Some(thread),
        })
    }

    fn run_loop(
        &mut self,
        buses: &Buses,
        c: &Control,
        mut on_first_run: Option<Box<dyn FnOnce() + Send>>,
        stop_flag: Option<Arc<AtomicBool>>,
    ) -> Result<VcpuOutcome, VcpuError> {
        loop {
            {
                let mut st = c.lock();
                loop {
                    match st.request {
                        Request::Stop => return Ok(VcpuOutcome::Stopped),
                        Request::Pause => {
                            if !st.paused {
                                st.paused = true;
                                c.cv.notify_all();
                            }
                            st = c.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        Request::Run => {
                            if st.paused {
                                st.paused = false;
                                c.cv.notify_all();
                            }
                            break;
                        }
                    }
                }
            }
            if let Some(f) = on_first_run.take() {
                f();
            }
            match self.run_once(buses)? {
                Some(outcome) => return Ok(outcome),
                None => c.clear_immediate_exit(),
            }
            // A device this exit reached may have ended the VM (power-off, reset): stop
            // here rather than run the guest again until the stop request arrives.
            if stop_flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Ok(VcpuOutcome::Stopped);
            }
        }
    }
}

/// Options for [`Vcpu::start`].
#[derive(Default)]
pub struct ThreadOptions {
    /// Written (1) when the thread ends, for the VMM's event loop.
    pub exit_evt: Option<EventFd>,
    /// Called on the vCPU thread right before its first KVM_RUN.
    pub on_first_run: Option<Box<dyn FnOnce() + Send>>,
    /// Checked after every exit: once set (by a device that ends the VM), the thread
    /// stops without entering the guest again.
    pub stop_flag: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for ThreadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadOptions")
            .field("exit_evt", &self.exit_evt)
            .field("on_first_run", &self.on_first_run.is_some())
            .field("stop_flag", &self.stop_flag)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Request {
    #[default]
    Run,
    Pause,
    Stop,
}

#[derive(Debug, Default)]
struct ControlState {
    request: Request,
    paused: bool,
    exited: bool,
    tid: Option<libc::pthread_t>,
}

#[derive(Debug)]
struct Control {
    state: Mutex<ControlState>,
    cv: Condvar,
    immediate_exit: AtomicPtr<u8>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn immediate_exit(&self) -> &AtomicU8 {
        // SAFETY: the pointer is to the live kvm_run page (see `Vcpu::start`); callers hold the
        // state lock with `exited == false` or are the vCPU thread itself.
        unsafe { AtomicU8::from_ptr(self.immediate_exit.load(Ordering::Relaxed)) }
    }

    fn clear_immediate_exit(&self) {
        self.immediate_exit().store(0, Ordering::SeqCst);
    }

    /// Sets a request and makes the vCPU see it: immediate_exit for a vCPU about to enter
    /// KVM_RUN, the signal for one inside it.
    fn request(&self, r: Request) {
        let mut st = self.lock();
        if st.request != Request::Stop {
            st.request = r;
        }
        self.cv.notify_all();
        if !st.exited {
            self.immediate_exit().store(1, Ordering::SeqCst);
            if let Some(tid) = st.tid {
                kick_thread(tid);
            }
        }
    }
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u8,
    control: Arc<Control>,
    thread: Option<JoinHandle<Result<VcpuOutcome, VcpuError>>>,
}

impl VcpuHandle {
    /// The vCPU id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Pauses the vCPU and waits (up to `timeout`) until it is out of KVM_RUN. Returns
    /// `Ok(false)` when the thread had already ended.
    pub fn pause(&self, timeout: Duration) -> Result<bool, VcpuError> {
        self.control.request(Request::Pause);
        let deadline = Instant::now() + timeout;
        let mut st = self.control.lock();
        while !st.paused && !st.exited {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VcpuError::PauseTimeout(self.id));
            }
            st = self
                .control
                .cv
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        Ok(!st.exited)
    }

    /// Whether the vCPU is paused now.
    pub fn is_paused(&self) -> bool {
        self.control.lock().paused
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) {
        let mut st = self.control.lock();
        if st.request == Request::Pause {
            st.request = Request::Run;
        }
        self.control.cv.notify_all();
    }

    /// Asks the vCPU to stop (does not wait; see [`VcpuHandle::join`]).
    pub fn stop(&self) {
        self.control.request(Request::Stop);
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.control.lock().exited
    }

    /// Waits for the thread and returns its outcome.
    pub fn join(mut self) -> Result<VcpuOutcome, VcpuError> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| VcpuError::Panicked(self.id))?,
            None => Ok(VcpuOutcome::Stopped),
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.control.request(Request::Stop);
            let _ = t.join();
        }
    }
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    static RESULT: Mutex<Option<i32>> = Mutex::new(None);
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler does nothing
        // (async-signal-safe) and exists only so the signal interrupts KVM_RUN with EINTR.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = kick_handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            *RESULT.lock().unwrap_or_else(|e| e.into_inner()) =
                std::io::Error::last_os_error().raw_os_error();
        }
    });
    match *RESULT.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(errno) => Err(VcpuError::Signal(std::io::Error::from_raw_os_error(errno))),
        None => Ok(()),
    }
}

fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

fn kick_thread(tid: libc::pthread_t) {
    // SAFETY: callers hold the control lock with `exited == false`, so `tid` names a live
    // thread, and the kick signal has a handler installed.
    let rc = unsafe { libc::pthread_kill(tid, kick_signal()) };
    if rc != 0 {
        log::warn!("cannot kick vCPU thread: errno {rc}");
    }
}
