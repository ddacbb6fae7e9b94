//! Differential checks against libseccomp (feature `test-utils`): the same [`Profile`]
//! compiled by [`compile`] and by libseccomp, as runc drives it, both programs run by
//! [`interp::run`] on the same calls, the verdicts compared. Also the body of the
//! `seccomp_diff` fuzz target ([`seccomp_diff`]), which the corpus replay test runs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};

use crate::{compile, interp, table, Action, ArgCmp, CmpOp, Insn, Profile, Rule, SeccompData};

mod decode;
pub use decode::{decode, reference_errors, seccomp_diff};

/// `AUDIT_ARCH_I386`: a foreign architecture for the inputs.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`: another foreign architecture.
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// Why a profile could not be compared.
#[derive(Debug)]
pub enum DiffError {
    /// Our compiler refused it.
    Ours(crate::Error),
    /// libseccomp refused it (or exporting failed), with its message.
    Reference(String),
    /// One of the programs is one the interpreter (the kernel) would refuse.
    Run(crate::Error),
}

/// A call on which the two programs disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The call.
    pub input: SeccompData,
    /// Our program's return value.
    pub ours: u32,
    /// libseccomp's.
    pub reference: u32,
}

fn scmp_action(a: Action) -> ScmpAction {
    match a {
        Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Errno(e) => ScmpAction::Errno(i32::from(e)),
        Action::Trace(m) => ScmpAction::Trace(m),
        Action::Notify => ScmpAction::Notify,
        Action::Log => ScmpAction::Log,
        Action::Allow => ScmpAction::Allow,
    }
}

fn scmp_cmp(c: &ArgCmp) -> ScmpArgCompare {
    let op = match c.op {
        CmpOp::Ne => ScmpCompareOp::NotEqual,
        CmpOp::Lt => ScmpCompareOp::Less,
        CmpOp::Le => ScmpCompareOp::LessOrEqual,
        CmpOp::Eq => ScmpCompareOp::Equal,
        CmpOp::Ge => ScmpCompareOp::GreaterEqual,
        CmpOp::Gt => ScmpCompareOp::Greater,
        CmpOp::MaskedEq => ScmpCompareOp::MaskedEqual(c.value),
    };
    let datum = if c.op == CmpOp::MaskedEq {
        c.value_two
    } else {
        c.value
    };
    ScmpArgCompare::new(u32::from(c.index), op, datum)
}

/// `profile` compiled by libseccomp as runc does it (`libcontainer/seccomp`): the
/// default action, rules with the default's action skipped, every other rule added
/// with `seccomp_rule_add` per syscall; the bad-architecture action set to
/// `ERRNO(ENOSYS)`, ours. Exported with `seccomp_export_bpf` into a memfd.
///
/// # Errors
/// libseccomp's refusal (e.g. a rule it cannot express), with its message.
pub fn reference(profile: &Profile) -> Result<Vec<Insn>, String> {
    let e = |what: &str, err: libseccomp::error::SeccompError| format!("{what}: {err}");
    if ScmpArch::native() != ScmpArch::X8664 {
        return Err("libseccomp's native architecture is not x86_64".into());
    }
    let mut ctx = ScmpFilterContext::new(scmp_action(profile.default))
        .map_err(|err| e("seccomp_init", err))?;
    ctx.set_act_badarch(ScmpAction::Errno(libc::ENOSYS))
        .map_err(|err| e("SCMP_FLTATR_ACT_BADARCH", err))?;
    for rule in &profile.rules {
        if rule.action == profile.default {
            continue; // runc: "This rule is redundant, silently skip it"
        }
        let conds: Vec<ScmpArgCompare> = rule.args.iter().map(scmp_cmp).collect();
        for &nr in &rule.syscalls {
            let nr = i32::try_from(nr).map_err(|_| format!("syscall {nr}"))?;
            ctx.add_rule_conditional(scmp_action(rule.action), nr, &conds)
                .map_err(|err| e(&format!("seccomp_rule_add({nr}, {rule:?})"), err))?;
        }
    }
    export(&ctx)
}

fn export(ctx: &ScmpFilterContext) -> Result<Vec<Insn>, String> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd
    // or -1.
    let fd = unsafe { libc::memfd_create(c"seccomp-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file)
        .map_err(|err| format!("seccomp_export_bpf: {err}"))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|err| format!("reading the exported BPF: {err}"))?;
    if bytes.len() % 8 != 0 {
        return Err(format!("exported BPF of {} bytes", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| Insn {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Compiles `profile` with both and runs both programs on every input: the calls on
/// which they disagree (empty when they agree everywhere).
///
/// # Errors
/// When either compiler refuses the profile, or a program does not run.
pub fn differences(profile: &Profile, inputs: &[SeccompData]) -> Result<Vec<Mismatch>, DiffError> {
    let ours = compile(profile).map_err(DiffError::Ours)?;
    let reference = reference(profile).map_err(DiffError::Reference)?;
    let mut out = Vec::new();
    for input in inputs {
        let o = interp::run(&ours.insns, input).map_err(DiffError::Run)?;
        let r = interp::run(&reference, input).map_err(DiffError::Run)?;
        if o != r {
            out.push(Mismatch {
                input: *input,
                ours: o,
                reference: r,
            });
        }
    }
    Ok(out)
}

/// Values that satisfy `c` (when it can be satisfied) and values at its boundaries.
fn boundary_values(c: &ArgCmp) -> Vec<u64> {
    let v = c.value;
    let mut out = vec![
        v,
        v.wrapping_add(1),
        v.wrapping_sub(1),
        v ^ (1 << 32),
        v ^ 1,
        0,
        u64::MAX,
        v & 0xffff_ffff,
        v >> 32,
    ];
    if c.op == CmpOp::MaskedEq {
        out.extend([c.value_two, c.value_two | !c.value, c.value_two ^ 1]);
    }
    out
}

/// A value of argument `c.index` that satisfies `c`, when one is easy to find.
fn satisfying(c: &ArgCmp) -> u64 {
    boundary_values(c)
        .into_iter()
        .find(|&v| c.matches(v))
        .unwrap_or(0)
}

/// Calls that exercise `profile`: for every rule and syscall, arguments that satisfy
/// all its conditions, then each argument moved to the boundaries of each condition;
/// syscalls no rule names; x32 numbers; other architectures.
pub fn inputs_for(profile: &Profile) -> Vec<SeccompData> {
    let mut out = Vec::new();
    let mut nrs: Vec<u32> = vec![0, 1, 59, 435, 1000, u32::MAX];
    let conds: Vec<ArgCmp> = profile
        .rules
        .iter()
        .flat_map(|r| r.args.iter().copied())
        .collect();
    for rule in &profile.rules {
        nrs.extend(rule.syscalls.iter().copied());
        let mut base = [0u64; 6];
        for c in &rule.args {
            if let Some(slot) = base.get_mut(usize::from(c.index)) {
                *slot = satisfying(c);
            }
        }
        for &nr in &rule.syscalls {
            out.push(SeccompData::x86_64(nr, base));
            for c in &conds {
                for v in boundary_values(c) {
                    let mut args = base;
                    if let Some(slot) = args.get_mut(usize::from(c.index)) {
                        *slot = v;
                    }
                    out.push(SeccompData::x86_64(nr, args));
                }
            }
        }
    }
    nrs.sort_unstable();
    nrs.dedup();
    for &nr in &nrs {
        out.push(SeccompData::x86_64(nr, [0; 6]));
        out.push(SeccompData::x86_64(nr | crate::X32_SYSCALL_BIT, [0; 6]));
        for arch in [AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0] {
            out.push(SeccompData {
                arch,
                ..SeccompData::x86_64(nr, [0; 6])
            });
        }
    }
    out
}

/// The Docker/Podman default profile's shape: `ERRNO(EPERM)` by default, a long allow
/// list, `personality` allowed for a few exact arguments, `clone` allowed without the
/// namespace flags (`MASKED_EQ`), a few calls failing with `ENOSYS` (as for `clone3`).
pub fn docker_like() -> Profile {
    let nr = |n: &str| table::number(n).into_iter().collect::<Vec<u32>>();
    let allow: Vec<u32> = table::SYSCALLS
        .iter()
        .map(|&(_, nr)| nr)
        .filter(|nr| ![56, 135, 435, 165, 169, 246, 320].contains(nr))
        .take(300)
        .collect();
    let mut rules = vec![Rule {
        syscalls: allow,
        action: Action::Allow,
        args: vec![],
    }];
    for v in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(Rule {
            syscalls: nr("personality"),
            action: Action::Allow,
            args: vec![ArgCmp {
                index: 0,
                op: CmpOp::Eq,
                value: v,
                value_two: 0,
            }],
        });
    }
    rules.push(Rule {
        syscalls: nr("clone"),
        action: Action::Allow,
        args: vec![ArgCmp {
            index: 0,
            op: CmpOp::MaskedEq,
            value: 0x7e02_0000,
            value_two: 0,
        }],
    });
    rules.push(Rule {
        syscalls: nr("clone3"),
        action: Action::Errno(libc::ENOSYS as u16),
        args: vec![],
    });
    Profile {
        default: Action::Errno(libc::EPERM as u16),
        rules,
        flags: 0,
    }
}
