//! Seccomp filters per VMM thread kind, as Firecracker and Cloud Hypervisor install them: a
//! guest that takes over a vCPU or a device finds a thread that can make only the system
//! calls that thread needs, with `ioctl` requests checked one by one.
//!
//! - [`ThreadKind`]: the event loop ([`ThreadKind::Vmm`], devices, snapshots and
//!   migrations run there), each vCPU, and the API threads. The lists are data, one per
//!   kind, in [`filters`]; the KVM ioctl numbers come from the hypervisor
//!   ([`virtkit_vcpu::Hypervisor::ioctls`]).
//! - [`SeccompMode`]: [`On`](SeccompMode::On) (a forbidden call kills the VMM with a
//!   line naming the call and the thread), [`Log`](SeccompMode::Log) (allowed, logged
//!   by the kernel), [`Trap`](SeccompMode::Trap) (the default `SIGSYS`: a core dump to
//!   debug), [`Off`](SeccompMode::Off).
//! - [`apply`] installs a kind's filter on the calling thread. [`crate::Vmm::run`] applies
//!   [`ThreadKind::Vcpu`] first thing on each vCPU thread and [`ThreadKind::Vmm`] on the
//!   loop once the vCPUs run; [`crate::api::ApiServer`] applies [`ThreadKind::Api`] before
//!   it serves. A library user chooses with [`crate::VmmBuilder::seccomp`] (off unless
//!   asked; vm-runner turns it on by default).
//!
//! ```
//! use virtkit_vmm::seccomp::{program, SeccompMode, ThreadKind};
//! use virtkit_seccomp::{interp, SeccompData};
//!
//! let prog = program(ThreadKind::Vcpu, SeccompMode::On, &virtkit_vcpu::ioctls::KVM)
//!     .unwrap()
//!     .expect("a filter when on");
//! let run = |nr: u32, arg1: u64| {
//!     interp::run(&prog.insns, &SeccompData::x86_64(nr, [3, arg1, 0, 0, 0, 0])).unwrap()
//! };
//! let allow = virtkit_seccomp::Action::Allow.ret();
//! assert_eq!(run(16, virtkit_vcpu::ioctls::KVM_RUN), allow); // ioctl(KVM_RUN)
//! assert_ne!(run(16, 0xae01), allow); // ioctl(KVM_CREATE_VM)
//! assert_ne!(run(59, 0), allow); // execve
//! ```

pub mod filters;
mod sigsys;

use std::fmt;
use std::str::FromStr;

use virtkit_seccomp::{Action, ArgCmp, CmpOp, Profile, Program, Rule};
use virtkit_vcpu::ioctls::HypervisorIoctls;

use filters::Allow;

/// The exit status of a VMM killed by its filter in [`SeccompMode::On`] (128 + `SIGSYS`).
pub const EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// The environment variable of the test hook: set to a [`ThreadKind`] name, each thread of
/// that kind makes a forbidden call (`getppid`) right after its filter is installed.
pub const SELFTEST_ENV: &str = "VIRTKIT_SECCOMP_SELFTEST";

/// What a filter does with a call outside its list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SeccompMode {
    /// No filter.
    #[default]
    Off,
    /// The call traps; the VMM writes which call on which thread, then exits with
    /// [`EXIT_CODE`].
    On,
    /// The call is allowed and the kernel logs it (`audit: type=1326` in its log).
    Log,
    /// The call raises `SIGSYS` with its default action (the process dumps core).
    Trap,
}

impl SeccompMode {
    fn default_action(self) -> Option<Action> {
        match self {
            SeccompMode::Off => None,
            SeccompMode::On | SeccompMode::Trap => Some(Action::Trap),
            SeccompMode::Log => Some(Action::Log),
        }
    }
}

impl FromStr for SeccompMode {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "on" | "true" => SeccompMode::On,
            "off" | "false" => SeccompMode::Off,
            "log" => SeccompMode::Log,
            "trap" => SeccompMode::Trap,
            _ => return Err(SeccompError::Mode(s.to_string())),
        })
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Off => "off",
            SeccompMode::On => "on",
            SeccompMode::Log => "log",
            SeccompMode::Trap => "trap",
        })
    }
}

/// The kinds of VMM thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The event loop: devices, the serial output, snapshots and migrations.
    Vmm,
    /// A vCPU.
    Vcpu,
    /// The API's threads (they also build VMs).
    Api,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api];

    /// The kind's name ("vmm", "vcpu", "api").
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

/// Errors of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A mode that is not on, off, log or trap.
    #[error("seccomp mode {0:?}: expected on, off, log or trap")]
    Mode(String),
    /// A list names a call the syscall table does not know (a bug in the lists).
    #[error("seccomp list of the {kind} threads names an unknown system call {name}")]
    UnknownSyscall {
        /// The thread kind.
        kind: &'static str,
        /// The name.
        name: &'static str,
    },
    /// The compiler refused the profile.
    #[error("seccomp filter of the {kind} threads: {error}")]
    Compile {
        /// The thread kind.
        kind: &'static str,
        /// The error.
        #[source]
        error: virtkit_seccomp::Error,
    },
    /// `SIGSYS` handler or `no_new_privs` set-up failed.
    #[error("seccomp set-up ({what}): {error}")]
    Setup {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        error: std::io::Error,
    },
}

/// The profile of `kind` with `default` for every call outside its list.
pub fn profile(
    kind: ThreadKind,
    default: Action,
    hv: &HypervisorIoctls,
) -> Result<Profile, SeccompError> {
    let nr = |name: &'static str| {
        virtkit_seccomp::table::number(name).ok_or(SeccompError::UnknownSyscall {
            kind: kind.name(),
            name,
        })
    };
    let mut p = Profile::new(default);
    // glibc starts threads with clone3 and falls back to clone on ENOSYS: clone's flags
    // can be checked, clone3's (behind a pointer) cannot.
    p.rules.push(Rule {
        syscalls: vec![nr("clone3")?],
        action: Action::Errno(libc::ENOSYS as u16),
        args: Vec::new(),
    });
    for entry in filters::allow_list(kind, hv) {
        let (name, args): (&'static str, Vec<Vec<ArgCmp>>) = match entry {
            Allow::Any(name) => (name, vec![Vec::new()]),
            Allow::ArgIn {
                name,
                index,
                values,
            } => (
                name,
                values
                    .into_iter()
                    .map(|value| {
                        vec![ArgCmp {
                            index,
                            op: CmpOp::Eq,
                            value,
                            value_two: 0,
                        }]
                    })
                    .collect(),
            ),
            Allow::Masked {
                name,
                index,
                mask,
                value,
            } => (
                name,
                vec![vec![ArgCmp {
                    index,
                    op: CmpOp::MaskedEq,
                    value: mask,
                    value_two: value,
                }]],
            ),
        };
        let n = nr(name)?;
        for a in args {
            p.rules.push(Rule {
                syscalls: vec![n],
                action: Action::Allow,
                args: a,
            });
        }
    }
    Ok(p)
}

/// The compiled filter of `kind` in `mode` (`None` when off).
pub fn program(
    kind: ThreadKind,
    mode: SeccompMode,
    hv: &HypervisorIoctls,
) -> Result<Option<Program>, SeccompError> {
    let Some(default) = mode.default_action() else {
        return Ok(None);
    };
    let p = profile(kind, default, hv)?;
    virtkit_seccomp::compile(&p)
        .map(Some)
        .map_err(|error| SeccompError::Compile {
            kind: kind.name(),
            error,
        })
}

/// Names the calling thread in the `SIGSYS` message when it runs under `kind`'s filter
/// inherited from the thread that started it (no filter of its own installed).
pub(crate) fn label_inherited(kind: ThreadKind) {
    sigsys::set_label(kind);
}

/// A compiled filter for one thread kind and mode, ready to install on as many threads
/// of that kind as need it (compiled once, not per thread).
#[derive(Clone, Debug)]
pub struct Filter {
    kind: ThreadKind,
    mode: SeccompMode,
    prog: Program,
}

impl Filter {
    /// The filter of `kind` in `mode` (`None` when off).
    pub fn new(
        kind: ThreadKind,
        mode: SeccompMode,
        hv: &HypervisorIoctls,
    ) -> Result<Option<Filter>, SeccompError> {
        Ok(program(kind, mode, hv)?.map(|prog| Filter { kind, mode, prog }))
    }

    /// Installs the filter on the calling thread (and sets its `no_new_privs`). In
    /// [`SeccompMode::On`] the `SIGSYS` handler is installed first (once per process) and
    /// the thread's name recorded for its message.
    pub fn install(&self) -> Result<(), SeccompError> {
        let (kind, mode, prog) = (self.kind, self.mode, &self.prog);
        if mode == SeccompMode::On {
            sigsys::install_handler().map_err(|error| SeccompError::Setup {
                what: "SIGSYS handler",
                error,
            })?;
            sigsys::set_label(kind);
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SeccompError::Setup {
                what: "PR_SET_NO_NEW_PRIVS",
                error: std::io::Error::last_os_error(),
            });
        }
        virtkit_seccomp::install(prog).map_err(|error| SeccompError::Compile {
            kind: kind.name(),
            error,
        })?;
        log::debug!(
            "seccomp: {} filter ({} instructions, {mode}) on thread {:?}",
            kind.name(),
            prog.insns.len(),
            std::thread::current().name()
        );
        if std::env::var_os(SELFTEST_ENV).is_some_and(|v| v == kind.name()) {
            // The test hook: a call no list allows.
            // SAFETY: getppid has no arguments and no effect.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok(())
    }
}

/// Compiles the filter of `kind` in `mode` and installs it on the calling thread (see
/// [`Filter::install`]); nothing when off.
pub fn apply(
    kind: ThreadKind,
    mode: SeccompMode,
    hv: &HypervisorIoctls,
) -> Result<(), SeccompError> {
    match Filter::new(kind, mode, hv)? {
        Some(f) => f.install(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtkit_seccomp::{interp, SeccompData};

    fn verdict(kind: ThreadKind, nr: &str, args: [u64; 6]) -> u32 {
        let prog = program(kind, SeccompMode::On, &virtkit_vcpu::ioctls::KVM)
            .unwrap()
            .unwrap();
        let n = virtkit_seccomp::table::number(nr).unwrap();
        interp::run(&prog.insns, &SeccompData::x86_64(n, args)).unwrap()
    }

    const ALLOW: u32 = virtkit_seccomp::ret::ALLOW;
    const TRAP: u32 = virtkit_seccomp::ret::TRAP;

    #[test]
    fn every_kind_compiles_and_refuses_what_no_vmm_thread_needs() {
        for kind in ThreadKind::ALL {
            for forbidden in [
                "execve", "fork", "ptrace", "mount", "getppid", "kill", "setuid",
            ] {
                assert_eq!(
                    verdict(kind, forbidden, [0; 6]),
                    TRAP,
                    "{kind:?} {forbidden}"
                );
            }
            assert_eq!(verdict(kind, "write", [2, 0, 0, 0, 0, 0]), ALLOW);
            assert_eq!(verdict(kind, "exit_group", [0; 6]), ALLOW);
            // Executable memory never.
            let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
            assert_eq!(verdict(kind, "mmap", [0, 4096, rwx, 0, 0, 0]), TRAP);
            assert_eq!(verdict(kind, "mprotect", [0, 4096, rwx, 0, 0, 0]), TRAP);
            assert_eq!(verdict(kind, "mmap", [0, 4096, 3, 0x22, 0, 0]), ALLOW);
            // clone3 says ENOSYS, so glibc uses clone, whose flags are checked.
            assert_eq!(
                verdict(kind, "clone3", [0; 6]),
                virtkit_seccomp::ret::ERRNO | libc::ENOSYS as u32
            );
        }
    }

    #[test]
    fn ioctls_are_checked_per_kind() {
        use virtkit_vcpu::ioctls::{BUILD, KVM_RUN, VM_RUNTIME};
        let ioctl = |kind, req| verdict(kind, "ioctl", [3, req, 0, 0, 0, 0]);
        assert_eq!(ioctl(ThreadKind::Vcpu, KVM_RUN), ALLOW);
        assert_eq!(ioctl(ThreadKind::Vcpu, BUILD[1]), TRAP); // KVM_CREATE_VM
        assert_eq!(ioctl(ThreadKind::Vmm, VM_RUNTIME[3]), ALLOW); // KVM_IOEVENTFD
        assert_eq!(ioctl(ThreadKind::Vmm, BUILD[7]), TRAP); // KVM_CREATE_VCPU
        assert_eq!(ioctl(ThreadKind::Vmm, 0x4004_54ca), TRAP); // TUNSETIFF
        assert_eq!(ioctl(ThreadKind::Api, BUILD[1]), ALLOW);
        assert_eq!(ioctl(ThreadKind::Api, 0x4004_54ca), ALLOW);
        // The kernel ignores the upper half of the request; the filter does not.
        assert_eq!(ioctl(ThreadKind::Vcpu, KVM_RUN | 1 << 32), TRAP);
        assert_eq!(ioctl(ThreadKind::Api, 0x5412), TRAP); // TIOCSTI
    }

    #[test]
    fn only_the_api_starts_threads_and_never_processes() {
        let flags = |f: i32| [f as u64, 0, 0, 0, 0, 0];
        let thread = libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_THREAD | libc::CLONE_SIGHAND;
        assert_eq!(verdict(ThreadKind::Api, "clone", flags(thread)), ALLOW);
        assert_eq!(
            verdict(ThreadKind::Api, "clone", flags(libc::SIGCHLD)),
            TRAP
        );
        assert_eq!(verdict(ThreadKind::Vcpu, "clone", flags(thread)), TRAP);
        assert_eq!(verdict(ThreadKind::Vmm, "clone", flags(thread)), TRAP);
    }

    #[test]
    fn modes_parse_and_pick_the_default_action() {
        assert_eq!("on".parse::<SeccompMode>().unwrap(), SeccompMode::On);
        assert_eq!("false".parse::<SeccompMode>().unwrap(), SeccompMode::Off);
        assert_eq!("log".parse::<SeccompMode>().unwrap(), SeccompMode::Log);
        assert_eq!("trap".parse::<SeccompMode>().unwrap(), SeccompMode::Trap);
        let e = "kill".parse::<SeccompMode>().unwrap_err().to_string();
        assert!(e.contains("expected on, off, log or trap"), "{e}");
        let hv = &virtkit_vcpu::ioctls::KVM;
        assert!(program(ThreadKind::Vmm, SeccompMode::Off, hv)
            .unwrap()
            .is_none());
        let log = program(ThreadKind::Vmm, SeccompMode::Log, hv)
            .unwrap()
            .unwrap();
        let n = virtkit_seccomp::table::number("execve").unwrap();
        let v = interp::run(&log.insns, &SeccompData::x86_64(n, [0; 6])).unwrap();
        assert_eq!(v, virtkit_seccomp::ret::LOG);
    }
}
