//! Seccomp for virtkit containers: an OCI `linux.seccomp` profile compiled to the
//! classic BPF program the kernel runs on every system call, for x86_64.
//!
//! - [`Profile`] is the model: a default [`Action`] and [`Rule`]s (syscall numbers,
//!   an action, argument conditions [`ArgCmp`] with every `SCMP_CMP_*` operator on the
//!   full 64-bit value). [`Profile::from_oci`] builds it from an OCI profile, skipping
//!   syscall names the x86_64 [`table`] does not know, as runc does.
//! - [`compile`] turns it into a [`Program`]: an architecture check (other
//!   architectures get `ENOSYS`), x32 numbers to the default action, then the rules,
//!   the first match deciding. [`install`] loads it with `seccomp(2)`.
//! - [`interp::run`] executes any seccomp program (ours, libseccomp's) on a
//!   [`SeccompData`], as the kernel would: how the tests check what a program decides.
//! - With the `test-utils` feature, `testing` compiles the same profile with
//!   libseccomp (the reference runc and crun use) and compares the two programs'
//!   verdicts; it is also the body of the `seccomp_diff` fuzz target.
//!
//! ```
//! use virtkit_seccomp::{compile, interp, Action, Profile, SeccompData};
//!
//! # fn main() -> Result<(), virtkit_seccomp::Error> {
//! let oci: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(
//!     r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
//!         "syscalls": [
//!           {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
//!           {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
//!            "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
//!         ]}"#,
//! )
//! .expect("valid JSON");
//! let profile = Profile::from_oci(&oci)?;
//! let prog = compile(&profile)?;
//! let verdict = |nr, arg0| interp::run(&prog.insns, &SeccompData::x86_64(nr, [arg0, 0, 0, 0, 0, 0]));
//! assert_eq!(verdict(0, 0)?, Action::Allow.ret()); // read
//! assert_eq!(verdict(135, 8)?, Action::Allow.ret()); // personality(8)
//! assert_eq!(verdict(135, 9)?, Action::Errno(1).ret()); // personality(9): EPERM
//! assert_eq!(verdict(2, 0)?, Action::Errno(1).ret()); // open
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bpf;
pub mod interp;
mod profile;
pub mod table;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use bpf::{
    compile, install, install_with_listener, op, Insn, Program, AUDIT_ARCH_X86_64, MAX_INSNS,
    X32_SYSCALL_BIT,
};
pub use interp::SeccompData;
pub use profile::{ret, Action, ArgCmp, CmpOp, Profile, Rule};

/// What can go wrong compiling, installing or running a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `SCMP_ACT_NOTIFY` as the default action (every call would wait on the listener).
    #[error("seccomp defaultAction SCMP_ACT_NOTIFY is not allowed (use it in rules)")]
    NotifyDefault,
    /// An `errnoRet` that does not fit the 16-bit action data.
    #[error("seccomp errnoRet {0} is over 65535")]
    ErrnoRange(u32),
    /// An argument index over 5.
    #[error("seccomp argument index {index} for {syscall} (max 5)")]
    ArgIndex {
        /// The index given.
        index: usize,
        /// The rule's syscalls.
        syscall: String,
    },
    /// The program is longer than the kernel takes.
    #[error("seccomp program has {0} instructions (max 4096)")]
    TooLong(usize),
    /// A rule whose conditions need a jump over more than 255 instructions.
    #[error("seccomp rule too long (jump over 255 instructions)")]
    JumpTooFar,
    /// A bug in the assembler.
    #[error("seccomp compiler: {0}")]
    Internal(&'static str),
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Install(#[source] std::io::Error),
    /// A program the kernel would refuse, found by the interpreter.
    #[error("BPF program at instruction {pc}: {what}")]
    BadProgram {
        /// The instruction.
        pc: usize,
        /// What is wrong.
        what: &'static str,
    },
}
