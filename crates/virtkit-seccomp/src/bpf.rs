//! A [`Profile`] compiled to a classic BPF program for x86_64, and its installation.
//!
//! Layout: check the architecture, send x32 numbers where other architectures go
//! (`ENOSYS`), then one block per (rule, syscall) (the number, then its argument
//! conditions, ANDed) returning the rule's action; the default action at the end. Which
//! rules get a block is [`Profile::effective_rules`]: libseccomp's (runc's) precedence.

use crate::profile::{Action, ArgCmp, CmpOp, Profile};
use crate::Error;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// The bit that marks an x32 syscall number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// Classic BPF opcodes (`BPF_*` of linux/filter.h and linux/bpf_common.h).
pub mod op {
    /// `BPF_LD | BPF_W | BPF_ABS`: `A = data[k]`.
    pub const LD_W_ABS: u16 = 0x20;
    /// `BPF_JMP | BPF_JEQ | BPF_K`.
    pub const JEQ_K: u16 = 0x15;
    /// `BPF_JMP | BPF_JGT | BPF_K`.
    pub const JGT_K: u16 = 0x25;
    /// `BPF_JMP | BPF_JGE | BPF_K`.
    pub const JGE_K: u16 = 0x35;
    /// `BPF_ALU | BPF_AND | BPF_K`.
    pub const AND_K: u16 = 0x54;
    /// `BPF_RET | BPF_K`.
    pub const RET_K: u16 = 0x06;
}

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Insn {
    /// The opcode.
    pub code: u16,
    /// Forward jump when the condition holds.
    pub jt: u8,
    /// Forward jump when it does not.
    pub jf: u8,
    /// The operand.
    pub k: u32,
}

/// A compiled filter and the flags to install it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The instructions.
    pub insns: Vec<Insn>,
    /// `seccomp(2)` filter flags.
    pub flags: u32,
}

/// A jump target while assembling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum T {
    /// The next instruction.
    Next,
    /// A label.
    L(usize),
}

#[derive(Clone, Copy, Debug)]
struct Ins {
    code: u16,
    jt: T,
    jf: T,
    k: u32,
}

#[derive(Default)]
struct Asm {
    ins: Vec<Ins>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len().saturating_sub(1)
    }
    fn bind(&mut self, l: usize) {
        if let Some(slot) = self.labels.get_mut(l) {
            *slot = Some(self.ins.len());
        }
    }
    fn ld(&mut self, off: u32) {
        self.op(op::LD_W_ABS, T::Next, T::Next, off);
    }
    fn op(&mut self, code: u16, jt: T, jf: T, k: u32) {
        self.ins.push(Ins { code, jt, jf, k });
    }
    fn ret(&mut self, k: u32) {
        self.op(op::RET_K, T::Next, T::Next, k);
    }
    fn finish(self) -> Result<Vec<Insn>, Error> {
        if self.ins.len() > MAX_INSNS {
            return Err(Error::TooLong(self.ins.len()));
        }
        let off = |i: usize, t: T| -> Result<u8, Error> {
            match t {
                T::Next => Ok(0),
                T::L(l) => {
                    let dest = self
                        .labels
                        .get(l)
                        .copied()
                        .flatten()
                        .ok_or(Error::Internal("unbound label"))?;
                    let d = i
                        .checked_add(1)
                        .and_then(|n| dest.checked_sub(n))
                        .ok_or(Error::Internal("backward jump"))?;
                    u8::try_from(d).map_err(|_| Error::JumpTooFar)
                }
            }
        };
        let mut out = Vec::with_capacity(self.ins.len());
        for (i, ins) in self.ins.iter().enumerate() {
            out.push(Insn {
                code: ins.code,
                jt: off(i, ins.jt)?,
                jf: off(i, ins.jf)?,
                k: ins.k,
            });
        }
        Ok(out)
    }
}

/// The `seccomp_data` offset of argument `index`'s high or low word (little endian).
fn arg_off(index: u8, hi: bool) -> Result<u32, Error> {
    u32::from(index)
        .checked_mul(8)
        .and_then(|o| o.checked_add(if hi { 20 } else { 16 }))
        .ok_or(Error::Internal("argument offset"))
}

/// Emits one argument condition; falls through on success, jumps to `fail` otherwise.
fn emit_arg(a: &mut Asm, c: &ArgCmp, fail: usize) -> Result<(), Error> {
    let (vh, vl) = ((c.value >> 32) as u32, c.value as u32);
    let (hi, lo) = (arg_off(c.index, true)?, arg_off(c.index, false)?);
    let pass = a.label();
    let f = T::L(fail);
    let p = T::L(pass);
    match c.op {
        CmpOp::Eq => {
            a.ld(hi);
            a.op(op::JEQ_K, T::Next, f, vh);
            a.ld(lo);
            a.op(op::JEQ_K, T::Next, f, vl);
        }
        CmpOp::Ne => {
            a.ld(hi);
            a.op(op::JEQ_K, T::Next, p, vh);
            a.ld(lo);
            a.op(op::JEQ_K, f, T::Next, vl);
        }
        CmpOp::MaskedEq => {
            // libseccomp masks the expected value too: bits outside the mask never
            // make a rule unmatchable.
            let expect = c.value_two & c.value;
            let (eh, el) = ((expect >> 32) as u32, expect as u32);
            a.ld(hi);
            a.op(op::AND_K, T::Next, T::Next, vh);
            a.op(op::JEQ_K, T::Next, f, eh);
            a.ld(lo);
            a.op(op::AND_K, T::Next, T::Next, vl);
            a.op(op::JEQ_K, T::Next, f, el);
        }
        CmpOp::Gt | CmpOp::Ge => {
            a.ld(hi);
            a.op(op::JGT_K, p, T::Next, vh);
            a.op(op::JEQ_K, T::Next, f, vh);
            a.ld(lo);
            let code = if c.op == CmpOp::Gt {
                op::JGT_K
            } else {
                op::JGE_K
            };
            a.op(code, p, f, vl);
        }
        CmpOp::Lt | CmpOp::Le => {
            a.ld(hi);
            a.op(op::JGT_K, f, T::Next, vh);
            a.op(op::JEQ_K, T::Next, p, vh);
            a.ld(lo);
            let code = if c.op == CmpOp::Lt {
                op::JGE_K
            } else {
                op::JGT_K
            };
            a.op(code, f, p, vl);
        }
    }
    a.bind(pass);
    Ok(())
}

/// Compiles `profile` to a BPF program.
///
/// # Errors
/// An invalid profile ([`Profile::validate`]), a program over [`MAX_INSNS`], or a rule
/// whose conditions make a jump longer than 255 instructions.
pub fn compile(profile: &Profile) -> Result<Program, Error> {
    profile.validate()?;
    let default = profile.default.ret();
    let mut a = Asm::default();
    // Jumps are 8-bit: keep the early exits next to their tests.
    let arch_ok = a.label();
    a.ld(4);
    a.op(op::JEQ_K, T::L(arch_ok), T::Next, AUDIT_ARCH_X86_64);
    a.ret(Action::Errno(libc::ENOSYS as u16).ret());
    a.bind(arch_ok);
    a.ld(0);
    let native = a.label();
    // x32 calls use another syscall table: like another architecture, as libseccomp
    // does for an x86_64-only filter. (Their default action once let them past a
    // default-allow profile's deny rules.) Number -1 (a call a tracer skipped) is not
    // x32 and goes on to the default action, as in libseccomp.
    a.op(op::JGE_K, T::Next, T::L(native), X32_SYSCALL_BIT);
    a.op(op::JEQ_K, T::L(native), T::Next, u32::MAX);
    a.ret(Action::Errno(libc::ENOSYS as u16).ret());
    a.bind(native);
    // Consecutive rules for one number share its test: a call with another number jumps
    // over the whole run at once (runs are cut where an 8-bit jump could not cross them).
    // The accumulator holds the number here and after a failed number test; it is loaded
    // again only where a condition may have loaded an argument.
    let mut a_holds_nr = true;
    let rules = profile.effective_rules();
    let mut i = 0;
    while i < rules.len() {
        let nr = rules[i].1;
        let mut end = i;
        let mut cost = 0;
        while end < rules.len() && rules[end].1 == nr {
            let c = 1 + 6 * rules[end].0.args.len();
            if end > i && cost + c > 240 {
                break;
            }
            cost += c;
            end += 1;
        }
        let group_end = a.label();
        if !a_holds_nr {
            a.ld(0);
        }
        a.op(op::JEQ_K, T::Next, T::L(group_end), nr);
        // Each rule's conditions load the arguments they test; a failed one goes on to
        // the next rule of the run, the last one's to the run's end.
        for (rule, _) in &rules[i..end] {
            let next = a.label();
            for c in &rule.args {
                emit_arg(&mut a, c, next)?;
            }
            a.ret(rule.action.ret());
            a.bind(next);
        }
        a.bind(group_end);
        a_holds_nr = rules[end - 1].0.args.is_empty();
        i = end;
    }
    a.ret(default);
    Ok(Program {
        insns: a.finish()?,
        flags: profile.flags,
    })
}

/// Installs `prog` on the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER)`
/// (after `no_new_privs`, or with `CAP_SYS_ADMIN`).
///
/// # Errors
/// The `seccomp(2)` failure, or [`Error::TooLong`].
pub fn install(prog: &Program) -> Result<(), Error> {
    install_flags(prog, prog.flags).map(drop)
}

/// Installs `prog` as [`install`] does, with `SECCOMP_FILTER_FLAG_NEW_LISTENER`: returns
/// the listener fd on which the calls the filter sends to [`Action::Notify`] wait for
/// an answer (`SECCOMP_IOCTL_NOTIF_RECV`/`SEND`). Closing every copy of it makes those
/// calls fail with `ENOSYS`.
///
/// # Errors
/// The `seccomp(2)` failure, or [`Error::TooLong`].
pub fn install_with_listener(prog: &Program) -> Result<std::os::fd::OwnedFd, Error> {
    const NEW_LISTENER: u32 = 1 << 3;
    let fd = install_flags(prog, prog.flags | NEW_LISTENER)?;
    // SAFETY: with NEW_LISTENER, seccomp(2) returns a new fd that nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

fn install_flags(prog: &Program, flags: u32) -> Result<libc::c_long, Error> {
    let len = u16::try_from(prog.insns.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_INSNS)
        .ok_or(Error::TooLong(prog.insns.len()))?;
    let fprog = libc::sock_fprog {
        len,
        // `Insn` is `repr(C)` with `sock_filter`'s fields, in its order and types.
        filter: prog.insns.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` instructions of `prog`, alive for the call, laid
    // out as `struct sock_filter`; the kernel only reads (copies) them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, // SECCOMP_SET_MODE_FILTER
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(Error::Install(std::io::Error::last_os_error()));
    }
    Ok(r)
}
