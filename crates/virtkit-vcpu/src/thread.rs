//! One thread per vCPU: its run loop dispatches port I/O and MMIO exits through [`Buses`],
//! and a [`VcpuHandle`] pauses, resumes and stops it from another thread (a real-time
//! signal plus the vCPU's [`Kick`]). Works with any [`Vcpu`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::Buses;
use crate::error::{VcpuError, VcpuOutcome};
use crate::hypervisor::{Kick, Vcpu, VmExit};
use crate::state::VcpuState;

/// Runs `vcpu` once and dispatches the exit. `Ok(None)`: keep running (I/O handled, or
/// interrupted by a kick); `Ok(Some(_))`: the vCPU is done.
pub fn run_once(vcpu: &mut dyn Vcpu, buses: &Buses) -> Result<Option<VcpuOutcome>, VcpuError> {
    let id = vcpu.id();
    let exit = vcpu.run()?;
    Ok(service(id, exit, buses))
}

/// Hands an exit to the devices; the outcome when it ends the vCPU's run.
fn service(id: u8, exit: VmExit<'_>, buses: &Buses) -> Option<VcpuOutcome> {
    match exit {
        VmExit::IoIn { port, data } => {
            if !buses.pio.read(u64::from(port), data) {
                log::trace!("vCPU {id}: unhandled in {port:#x}");
                data.fill(0xff);
            }
            None
        }
        VmExit::IoOut { port, data } => {
            if !buses.pio.write(u64::from(port), data) {
                log::trace!("vCPU {id}: unhandled out {port:#x} {data:x?}");
            }
            None
        }
        VmExit::MmioRead { addr, data } => {
            if !buses.mmio.read(addr, data) {
                log::debug!("vCPU {id}: unhandled MMIO read {addr:#x}");
                data.fill(0xff);
            }
            None
        }
        VmExit::MmioWrite { addr, data } => {
            if !buses.mmio.write(addr, data) {
                log::debug!("vCPU {id}: unhandled MMIO write {addr:#x} {data:x?}");
            }
            None
        }
        VmExit::Interrupted => None,
        VmExit::Halt => Some(VcpuOutcome::Halted),
        VmExit::Shutdown => Some(VcpuOutcome::Shutdown),
        VmExit::SystemEvent(e) => Some(VcpuOutcome::SystemEvent(e)),
        VmExit::FailEntry { reason, cpu } => Some(VcpuOutcome::FailEntry { reason, cpu }),
        VmExit::InternalError { suberror } => Some(VcpuOutcome::InternalError { suberror }),
        VmExit::Unhandled(what) => Some(VcpuOutcome::Unhandled(what)),
    }
}

/// A set-up step run first on a vCPU's thread ([`ThreadOptions::on_start`]).
pub type ThreadSetup = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Starts `vcpu`'s thread. It runs until an outcome, or until stopped.
pub fn start_vcpu(
    mut vcpu: Box<dyn Vcpu>,
    buses: Arc<Buses>,
    opts: ThreadOptions,
) -> Result<VcpuHandle, VcpuError> {
    install_kick_handler()?;
    let id = vcpu.id();
    let control = Arc::new(Control {
        state: Mutex::new(ControlState {
            request: if opts.start_paused {
                Request::Pause
            } else {
                Request::Run
            },
            ..ControlState::default()
        }),
        cv: Condvar::new(),
        kick: vcpu.kicker()?,
    });
    let c = control.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let setup = opts.on_start.map_or(Ok(()), |f| f());
            c.lock().tid = Some(current_thread());
            c.cv.notify_all();
            let result = match setup {
                Ok(()) => run_loop(&mut *vcpu, &buses, &c, opts.on_first_run, opts.stop_flag),
                Err(why) => Err(VcpuError::ThreadSetup { id, why }),
            };
            {
                let mut st = c.lock();
                st.exited = true;
                c.cv.notify_all();
            }
            drop(vcpu);
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

/// Saves a paused vCPU's state. The last exit may have left an I/O instruction half done
/// (KVM completes an `in` or `out` on the next KVM_RUN): one run with `immediate_exit` set
/// completes it without entering the guest, so the state saved is after the instruction.
/// Completing it can itself exit (the next part of a string or split access): such exits
/// go to the devices and the run is tried again, a few times. Called with the control lock
/// held, so no request interleaves.
fn save_paused(
    vcpu: &mut dyn Vcpu,
    kick: &dyn Kick,
    buses: &Buses,
) -> Result<VcpuState, VcpuError> {
    let id = vcpu.id();
    kick.set_immediate_exit(true);
    let mut completed = Ok(false);
    for _ in 0..16 {
        completed = match vcpu.run() {
            Ok(VmExit::Interrupted) => Ok(true),
            Ok(exit) => {
                log::debug!("vCPU {id}: an exit while completing before a save: {exit:?}");
                match service(id, exit, buses) {
                    None => continue,
                    Some(_) => Ok(false),
                }
            }
            Err(e) => Err(e),
        };
        break;
    }
    kick.set_immediate_exit(false);
    match completed {
        Ok(true) => vcpu.save_state(),
        Ok(false) => Err(VcpuError::NotPaused(id)),
        Err(e) => Err(e),
    }
}

fn run_loop(
    vcpu: &mut dyn Vcpu,
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
                        if matches!(st.save, Some(SaveSlot::Requested)) {
                            st.save = Some(SaveSlot::Done(save_paused(vcpu, &*c.kick, buses)));
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
        match run_once(vcpu, buses)? {
            Some(VcpuOutcome::Shutdown) => {
                // A triple fault: say where the guest was, for the report.
                match vcpu.save_state() {
                    Ok(s) => log::error!("vCPU {}: triple fault: {}", vcpu.id(), s.summary()),
                    Err(e) => {
                        log::error!("vCPU {}: triple fault (state unreadable: {e})", vcpu.id())
                    }
                }
                return Ok(VcpuOutcome::Shutdown);
            }
            Some(outcome) => return Ok(outcome),
            None => c.kick.set_immediate_exit(false),
        }
        // A device this exit reached may have ended the VM (power-off, reset): stop
        // here rather than run the guest again until the stop request arrives.
        if stop_flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            return Ok(VcpuOutcome::Stopped);
        }
    }
}

/// Options for [`start_vcpu`].
#[derive(Default)]
pub struct ThreadOptions {
    /// Written (1) when the thread ends, for the VMM's event loop.
    pub exit_evt: Option<EventFd>,
    /// Called on the vCPU thread right before its first KVM_RUN.
    pub on_first_run: Option<Box<dyn FnOnce() + Send>>,
    /// Called first on the new thread, before anything else (a seccomp filter for the
    /// thread); an error ends the thread with [`VcpuError::ThreadSetup`].
    pub on_start: Option<ThreadSetup>,
    /// Checked after every exit: once set (by a device that ends the VM), the thread
    /// stops without entering the guest again.
    pub stop_flag: Option<Arc<AtomicBool>>,
    /// Start paused: the vCPU enters the guest only after [`VcpuHandle::resume`] (a
    /// restored VM comes back paused).
    pub start_paused: bool,
}

impl std::fmt::Debug for ThreadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadOptions")
            .field("exit_evt", &self.exit_evt)
            .field("on_first_run", &self.on_first_run.is_some())
            .field("on_start", &self.on_start.is_some())
            .field("stop_flag", &self.stop_flag)
            .field("start_paused", &self.start_paused)
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
    save: Option<SaveSlot>,
}

/// A state save asked of a paused vCPU thread, then its result.
#[derive(Debug)]
enum SaveSlot {
    Requested,
    Done(Result<VcpuState, VcpuError>),
}

#[derive(Debug)]
struct Control {
    state: Mutex<ControlState>,
    cv: Condvar,
    kick: Arc<dyn Kick>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
            self.kick.set_immediate_exit(true);
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

    /// Saves the state of a paused vCPU: its own thread (which owns the vCPU) does it and
    /// hands the result back. Fails with [`VcpuError::NotPaused`] unless
    /// [`VcpuHandle::pause`] returned `Ok(true)` first.
    pub fn save_state(&self, timeout: Duration) -> Result<VcpuState, VcpuError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.control.lock();
        if !st.paused || st.exited || st.request != Request::Pause {
            return Err(VcpuError::NotPaused(self.id));
        }
        st.save = Some(SaveSlot::Requested);
        self.control.cv.notify_all();
        loop {
            if let Some(SaveSlot::Done(_)) = st.save {
                if let Some(SaveSlot::Done(r)) = st.save.take() {
                    return r;
                }
            }
            if st.exited {
                st.save = None;
                return Err(VcpuError::NotPaused(self.id));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.save = None;
                return Err(VcpuError::PauseTimeout(self.id));
            }
            st = self
                .control
                .cv
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
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
