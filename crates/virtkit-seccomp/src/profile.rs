//! The profile model: what a seccomp filter decides, independent of how it is
//! encoded, built from an OCI `linux.seccomp` profile and validated.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::{table, Error};

/// `SECCOMP_RET_*` action values (the high 16 bits of a filter's return value).
pub mod ret {
    /// Kill the thread (`SECCOMP_RET_KILL_THREAD`, also OCI's `SCMP_ACT_KILL`).
    pub const KILL_THREAD: u32 = 0x0000_0000;
    /// Kill the process.
    pub const KILL_PROCESS: u32 = 0x8000_0000;
    /// Send `SIGSYS`.
    pub const TRAP: u32 = 0x0003_0000;
    /// Fail with the errno in the low 16 bits.
    pub const ERRNO: u32 = 0x0005_0000;
    /// Notify a ptrace tracer with the low 16 bits as the message.
    pub const TRACE: u32 = 0x7ff0_0000;
    /// Stop the call and notify the user-space listener (`SECCOMP_RET_USER_NOTIF`).
    pub const USER_NOTIF: u32 = 0x7fc0_0000;
    /// Allow after logging.
    pub const LOG: u32 = 0x7ffc_0000;
    /// Allow.
    pub const ALLOW: u32 = 0x7fff_0000;
    /// The data part of a return value.
    pub const DATA_MASK: u32 = 0x0000_ffff;
}

/// What the filter does with a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Kill the calling thread.
    KillThread,
    /// Kill the whole process.
    KillProcess,
    /// Send `SIGSYS` to the thread.
    Trap,
    /// Fail the call with this errno.
    Errno(u16),
    /// Stop for a ptrace tracer, with this message.
    Trace(u16),
    /// Stop the call and ask the listener (the fd from
    /// [`install_with_listener`](crate::install_with_listener)) what it returns.
    Notify,
    /// Allow the call and log it.
    Log,
    /// Allow the call.
    Allow,
}

impl Action {
    /// The filter's return value for this action (`SECCOMP_RET_*` with its data).
    pub fn ret(self) -> u32 {
        match self {
            Action::KillThread => ret::KILL_THREAD,
            Action::KillProcess => ret::KILL_PROCESS,
            Action::Trap => ret::TRAP,
            Action::Errno(e) => ret::ERRNO | u32::from(e),
            Action::Trace(m) => ret::TRACE | u32::from(m),
            Action::Notify => ret::USER_NOTIF,
            Action::Log => ret::LOG,
            Action::Allow => ret::ALLOW,
        }
    }

    /// The action of an OCI action name and its `errnoRet` (EPERM when absent, as
    /// runc does for both `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE`).
    ///
    /// # Errors
    /// [`Error::ErrnoRange`] for an `errnoRet` over 65535.
    pub fn from_oci(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<Self, Error> {
        let data = || -> Result<u16, Error> {
            let v = errno_ret.unwrap_or(1);
            u16::try_from(v).map_err(|_| Error::ErrnoRange(v))
        };
        Ok(match action {
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Action::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActErrno => Action::Errno(data()?),
            LinuxSeccompAction::ScmpActTrace => Action::Trace(data()?),
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActNotify => Action::Notify,
        })
    }
}

/// How an argument is compared (OCI's `SCMP_CMP_*`), on the full 64-bit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `arg != value`.
    Ne,
    /// `arg < value`.
    Lt,
    /// `arg <= value`.
    Le,
    /// `arg == value`.
    Eq,
    /// `arg >= value`.
    Ge,
    /// `arg > value`.
    Gt,
    /// `arg & value == value_two & value` (OCI's `value` is the mask). Bits of
    /// `value_two` outside the mask are ignored, as libseccomp does (so runc and crun).
    MaskedEq,
}

impl From<LinuxSeccompOperator> for CmpOp {
    fn from(op: LinuxSeccompOperator) -> Self {
        match op {
            LinuxSeccompOperator::ScmpCmpNe => CmpOp::Ne,
            LinuxSeccompOperator::ScmpCmpLt => CmpOp::Lt,
            LinuxSeccompOperator::ScmpCmpLe => CmpOp::Le,
            LinuxSeccompOperator::ScmpCmpEq => CmpOp::Eq,
            LinuxSeccompOperator::ScmpCmpGe => CmpOp::Ge,
            LinuxSeccompOperator::ScmpCmpGt => CmpOp::Gt,
            LinuxSeccompOperator::ScmpCmpMaskedEq => CmpOp::MaskedEq,
        }
    }
}

/// One argument condition of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgCmp {
    /// The argument, 0 to 5.
    pub index: u8,
    /// The comparison.
    pub op: CmpOp,
    /// The operand (the mask for [`CmpOp::MaskedEq`]).
    pub value: u64,
    /// The expected masked value for [`CmpOp::MaskedEq`]; unused otherwise.
    pub value_two: u64,
}

impl ArgCmp {
    /// Whether `arg` satisfies the condition.
    pub fn matches(&self, arg: u64) -> bool {
        match self.op {
            CmpOp::Ne => arg != self.value,
            CmpOp::Lt => arg < self.value,
            CmpOp::Le => arg <= self.value,
            CmpOp::Eq => arg == self.value,
            CmpOp::Ge => arg >= self.value,
            CmpOp::Gt => arg > self.value,
            CmpOp::MaskedEq => arg & self.value == self.value_two & self.value,
        }
    }
}

/// A rule: these syscalls, when every argument condition holds, get `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// x86_64 syscall numbers.
    pub syscalls: Vec<u32>,
    /// The action when the rule matches.
    pub action: Action,
    /// Conditions, all of which must hold (none: the rule matches every call).
    pub args: Vec<ArgCmp>,
}

/// A seccomp profile for x86_64. Calls from another architecture, and x32 calls
/// (numbers with bit 30 set), fail with `ENOSYS`. For a native call the rules decide
/// with libseccomp's precedence, as runc and crun apply a profile
/// ([`Profile::effective_rules`]): rules with the default action are dropped; a
/// syscall's first rule without conditions decides it alone; otherwise its conditional
/// rules are tried in order, the first match deciding; then the default action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The action when no rule matches.
    pub default: Action,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// `seccomp(2)` filter flags (`SECCOMP_FILTER_FLAG_*`).
    pub flags: u32,
}

impl Profile {
    /// Whether some rule notifies a listener (`SCMP_ACT_NOTIFY`): the filter must then
    /// be installed with [`install_with_listener`](crate::install_with_listener).
    pub fn needs_listener(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Notify)
    }

    /// A profile with only a default action.
    pub fn new(default: Action) -> Self {
        Profile {
            default,
            rules: Vec::new(),
            flags: 0,
        }
    }

    /// The profile of an OCI `linux.seccomp`. Syscall names this x86_64 table does not
    /// know are skipped, as runc does (another architecture's calls, newer kernels).
    ///
    /// # Errors
    /// `SCMP_ACT_NOTIFY`, an `errnoRet` over 65535, an argument index over 5.
    pub fn from_oci(s: &LinuxSeccomp) -> Result<Self, Error> {
        let default = Action::from_oci(s.default_action(), s.default_errno_ret())?;
        if default == Action::Notify {
            return Err(Error::NotifyDefault);
        }
        let mut rules = Vec::new();
        for r in s.syscalls().iter().flatten() {
            let action = Action::from_oci(r.action(), r.errno_ret())?;
            let mut args = Vec::new();
            for a in r.args().iter().flatten() {
                let index = u8::try_from(a.index())
                    .ok()
                    .filter(|&i| i <= 5)
                    .ok_or_else(|| Error::ArgIndex {
                        index: a.index(),
                        syscall: r.names().join(","),
                    })?;
                args.push(ArgCmp {
                    index,
                    op: a.op().into(),
                    value: a.value(),
                    value_two: a.value_two().unwrap_or(0),
                });
            }
            let syscalls: Vec<u32> = r.names().iter().filter_map(|n| table::number(n)).collect();
            rules.push(Rule {
                syscalls,
                action,
                args,
            });
        }
        let mut flags = 0u32;
        for f in s.flags().iter().flatten() {
            flags |= match f {
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 32,
            };
        }
        Ok(Profile {
            default,
            rules,
            flags,
        })
    }

    /// Checks what the OCI conversion cannot rule out in a hand-built profile.
    ///
    /// # Errors
    /// [`Error::ArgIndex`] for an argument index over 5.
    pub fn validate(&self) -> Result<(), Error> {
        if self.default == Action::Notify {
            // As libseccomp (and so runc): every other call would wait on the listener.
            return Err(Error::NotifyDefault);
        }
        for r in &self.rules {
            if let Some(a) = r.args.iter().find(|a| a.index > 5) {
                return Err(Error::ArgIndex {
                    index: a.index.into(),
                    syscall: format!("{:?}", r.syscalls),
                });
            }
        }
        Ok(())
    }

    /// The (rule, syscall) pairs that decide, in order: rules whose action is the
    /// default are dropped (runc: "this rule is redundant"); a syscall with a rule
    /// without conditions keeps only the first such rule (libseccomp lets a catch-all
    /// rule override a syscall's conditional rules, wherever they stand).
    ///
    /// One difference from libseccomp remains: conditional rules for one syscall with
    /// different actions whose conditions overlap. Here the first in order decides;
    /// libseccomp merges them into a tree with its own order (and refuses the same
    /// conditions with two actions).
    pub fn effective_rules(&self) -> Vec<(&Rule, u32)> {
        let live = || self.rules.iter().filter(|r| r.action != self.default);
        let catch_all = |nr: u32| live().find(|r| r.args.is_empty() && r.syscalls.contains(&nr));
        let mut out: Vec<(&Rule, u32)> = Vec::new();
        for rule in live() {
            for &nr in &rule.syscalls {
                let keep = match catch_all(nr) {
                    Some(first) => std::ptr::eq(first, rule),
                    None => true,
                };
                if keep && !out.iter().any(|&(r, n)| std::ptr::eq(r, rule) && n == nr) {
                    out.push((rule, nr));
                }
            }
        }
        out
    }

    /// What the profile decides for a native (x86_64, non-x32) call: the first of
    /// [`Profile::effective_rules`] for `nr` whose conditions all hold, else the
    /// default. The specification the compiled program must agree with.
    pub fn decide(&self, nr: u32, args: &[u64; 6]) -> Action {
        self.effective_rules()
            .into_iter()
            .find(|&(r, n)| {
                n == nr
                    && r.args.iter().all(|a| {
                        args.get(usize::from(a.index))
                            .is_some_and(|&v| a.matches(v))
                    })
            })
            .map_or(self.default, |(r, _)| r.action)
    }
}
