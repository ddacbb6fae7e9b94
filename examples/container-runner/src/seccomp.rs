//! The OCI seccomp profile compiled to a classic BPF program (x86_64).
//!
//! Layout: check the architecture, reject x32 numbers, then one block per rule
//! (syscall number, then its argument conditions, ANDed) returning the rule's action;
//! the default action at the end. Unknown syscall names are skipped, as runc does.

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use crate::syscall_table;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06;

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
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.ins.len());
    }
    fn ld(&mut self, off: u32) {
        self.op(BPF_LD_W_ABS, T::Next, T::Next, off);
    }
    fn op(&mut self, code: u16, jt: T, jf: T, k: u32) {
        self.ins.push(Ins { code, jt, jf, k });
    }
    fn ret(&mut self, k: u32) {
        self.op(BPF_RET_K, T::Next, T::Next, k);
    }
    fn finish(self) -> Result<Vec<libc::sock_filter>> {
        let mut out = Vec::with_capacity(self.ins.len());
        for (i, ins) in self.ins.iter().enumerate() {
            let off = |t: T| -> Result<u8> {
                match t {
                    T::Next => Ok(0),
                    T::L(l) => {
                        let dest = self.labels[l].context("unbound label")?;
                        let d = dest
                            .checked_sub(i + 1)
                            .context("backward jump in seccomp program")?;
                        u8::try_from(d).context("seccomp rule too long (jump over 255)")
                    }
                }
            };
            out.push(libc::sock_filter {
                code: ins.code,
                jt: off(ins.jt)?,
                jf: off(ins.jf)?,
                k: ins.k,
            });
        }
        if out.len() > 4096 {
            bail!("seccomp program has {} instructions (max 4096)", out.len());
        }
        Ok(out)
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<u32> {
    if a == LinuxSeccompAction::ScmpActNotify {
        bail!("seccomp action SCMP_ACT_NOTIFY needs a listener, which is not supported");
    }
    Ok(a.as_u32(errno))
}

fn arg_off(index: usize, hi: bool) -> u32 {
    16 + 8 * index as u32 + if hi { 4 } else { 0 }
}

/// Emits one argument condition; falls through on success, jumps to `fail` otherwise.
fn emit_arg(
    a: &mut Asm,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
    fail: usize,
) {
    let (vh, vl) = ((value >> 32) as u32, value as u32);
    let pass = a.label();
    let f = T::L(fail);
    let p = T::L(pass);
    match op {
        LinuxSeccompOperator::ScmpCmpEq => {
            a.ld(arg_off(index, true));
            a.op(BPF_JEQ_K, T::Next, f, vh);
            a.ld(arg_off(index, false));
            a.op(BPF_JEQ_K, T::Next, f, vl);
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            a.ld(arg_off(index, true));
            a.op(BPF_JEQ_K, T::Next, p, vh);
            a.ld(arg_off(index, false));
            a.op(BPF_JEQ_K, f, T::Next, vl);
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (eh, el) = ((value_two >> 32) as u32, value_two as u32);
            a.ld(arg_off(index, true));
            a.op(BPF_AND_K, T::Next, T::Next, vh);
            a.op(BPF_JEQ_K, T::Next, f, eh);
            a.ld(arg_off(index, false));
            a.op(BPF_AND_K, T::Next, T::Next, vl);
            a.op(BPF_JEQ_K, T::Next, f, el);
        }
        LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe => {
            a.ld(arg_off(index, true));
            a.op(BPF_JGT_K, p, T::Next, vh);
            a.op(BPF_JEQ_K, T::Next, f, vh);
            a.ld(arg_off(index, false));
            let code = if op == LinuxSeccompOperator::ScmpCmpGt {
                BPF_JGT_K
            } else {
                BPF_JGE_K
            };
            a.op(code, p, f, vl);
        }
        LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe => {
            a.ld(arg_off(index, true));
            a.op(BPF_JGT_K, f, T::Next, vh);
            a.op(BPF_JEQ_K, T::Next, p, vh);
            a.ld(arg_off(index, false));
            let code = if op == LinuxSeccompOperator::ScmpCmpLt {
                BPF_JGE_K
            } else {
                BPF_JGT_K
            };
            a.op(code, f, p, vl);
        }
    }
    a.bind(pass);
}

/// Compiles the profile. Returns the program and the `seccomp(2)` filter flags.
pub fn compile(s: &LinuxSeccomp) -> Result<(Vec<libc::sock_filter>, u32)> {
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut a = Asm::default();
    // Jumps are 8-bit: keep the early exits next to their tests.
    let arch_ok = a.label();
    a.ld(4);
    a.op(BPF_JEQ_K, T::L(arch_ok), T::Next, AUDIT_ARCH_X86_64);
    a.ret(SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    a.bind(arch_ok);
    a.ld(0);
    let native = a.label();
    a.op(BPF_JGE_K, T::Next, T::L(native), X32_SYSCALL_BIT);
    a.ret(default);
    a.bind(native);
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        for name in rule.names() {
            let Some(nr) = syscall_table::number(name) else {
                continue; // unknown here (another arch or a newer kernel), as runc does
            };
            let next = a.label();
            a.ld(0);
            a.op(BPF_JEQ_K, T::Next, T::L(next), nr as u32);
            for arg in rule.args().iter().flatten() {
                let idx = arg.index();
                if idx > 5 {
                    bail!("seccomp argument index {idx} for {name} (max 5)");
                }
                emit_arg(
                    &mut a,
                    idx,
                    arg.op(),
                    arg.value(),
                    arg.value_two().unwrap_or(0),
                    next,
                );
            }
            a.ret(act);
            a.bind(next);
        }
    }
    a.ret(default);
    let mut flags = 0u32;
    for f in s.flags().iter().flatten() {
        use oci_spec::runtime::LinuxSeccompFilterFlag as F;
        flags |= match f {
            F::SeccompFilterFlagTsync => 1,
            F::SeccompFilterFlagLog => 2,
            F::SeccompFilterFlagSpecAllow => 4,
            F::SeccompFilterFlagWaitKillableRecv => 32,
        };
    }
    Ok((a.finish()?, flags))
}

/// Installs a compiled program with `seccomp(SECCOMP_SET_MODE_FILTER)`.
pub fn install(prog: &[libc::sock_filter], flags: u32) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, // SECCOMP_SET_MODE_FILTER
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions we emit.
    fn run(prog: &[libc::sock_filter], nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
        for (i, v) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                BPF_AND_K => acc &= i.k,
                BPF_RET_K => return i.k,
                c => {
                    let t = match c {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGT_K => acc > i.k,
                        BPF_JGE_K => acc >= i.k,
                        _ => panic!("unknown op {c:#x}"),
                    };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
            }
        }
    }

    fn profile(json: &str) -> Vec<libc::sock_filter> {
        let s: LinuxSeccomp = serde_json::from_str(json).unwrap();
        compile(&s).unwrap().0
    }

    const ALLOW: u32 = 0x7fff_0000;

    #[test]
    fn allowlist_with_errno_default() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "syscalls":[{"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        assert_eq!(run(&p, 0, [0; 6]), ALLOW); // read
        assert_eq!(run(&p, 1, [0; 6]), ALLOW); // write
        assert_eq!(run(&p, 2, [0; 6]), SECCOMP_RET_ERRNO | 1); // open
        assert_eq!(run(&p, 0x4000_0000, [0; 6]), SECCOMP_RET_ERRNO | 1); // x32
    }

    #[test]
    fn argument_conditions() {
        // personality(0) and personality(8) allowed, others EPERM; kill with sig > 9 denied.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
              {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
              {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
              {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
              {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[{"index":1,"value":9,"op":"SCMP_CMP_GT"}]},
              {"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
              {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{"index":0,"value":4294967296,"op":"SCMP_CMP_LE"}]}
            ]}"#,
        );
        let personality = 135;
        assert_eq!(run(&p, personality, [0; 6]), ALLOW);
        assert_eq!(run(&p, personality, [8, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            run(&p, personality, [9, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 1
        );
        assert_eq!(
            run(&p, personality, [1 << 32, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 1
        );
        let kill = 62;
        assert_eq!(run(&p, kill, [1, 9, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&p, kill, [1, 10, 0, 0, 0, 0]), SECCOMP_RET_ERRNO | 13);
        assert_eq!(
            run(&p, kill, [1, 1 << 33, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 13
        );
        let clone = 56;
        // No namespace flags: masked value 0 → denied by the rule as written.
        assert_eq!(run(&p, clone, [0x11, 0, 0, 0, 0, 0]), SECCOMP_RET_ERRNO | 1);
        assert_eq!(run(&p, clone, [0x1000_0000, 0, 0, 0, 0, 0]), ALLOW);
        let dup = 32;
        assert_eq!(
            run(&p, dup, [1 << 32, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 2
        );
        assert_eq!(run(&p, dup, [(1 << 32) + 1, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&p, dup, [5, 0, 0, 0, 0, 0]), SECCOMP_RET_ERRNO | 2);
    }

    #[test]
    fn large_profiles_compile() {
        // 300 single-syscall rules, like podman's and docker's default profiles.
        let names: Vec<String> = syscall_table::SYSCALLS
            .iter()
            .take(300)
            .map(|(n, _)| format!("{n:?}"))
            .collect();
        let p = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{}]}}"#,
            names
                .iter()
                .map(|n| format!(r#"{{"names":[{n}],"action":"SCMP_ACT_ALLOW"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        ));
        assert_eq!(run(&p, 0x4000_0000, [0; 6]), SECCOMP_RET_ERRNO | 1);
        let (_, last) = syscall_table::SYSCALLS[299];
        assert_eq!(run(&p, last as u32, [0; 6]), ALLOW);
    }

    #[test]
    fn notify_is_rejected() {
        let s: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
        assert!(compile(&s).is_err());
    }

    #[test]
    fn table_lookup() {
        assert_eq!(syscall_table::number("read"), Some(0));
        assert_eq!(syscall_table::number("openat2"), Some(437));
        assert_eq!(syscall_table::number("nope"), None);
    }
}
