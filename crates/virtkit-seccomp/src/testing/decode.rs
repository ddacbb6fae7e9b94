//! The `seccomp_diff` fuzz body: bytes decoded into a profile and a handful of calls,
//! the profile compiled by us and by libseccomp, both programs run on the calls (and
//! on [`inputs_for`]'s), any different verdict a panic.

use super::{differences, inputs_for, DiffError, Mismatch, AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386};
use crate::{table, Action, ArgCmp, CmpOp, Profile, Rule, SeccompData, X32_SYSCALL_BIT};

/// Syscalls the rules pick from: few, so rules collide on them.
const POOL: [u32; 8] = [0, 1, 2, 56, 62, 135, 435, 449];
/// Argument values at the edges of 32-bit and 64-bit comparisons.
const VALUES: [u64; 12] = [
    0,
    1,
    8,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    (1 << 32) + 1,
    0x7e02_0000,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| (v << 8) | u64::from(self.u8()))
    }
    fn value(&mut self) -> u64 {
        let b = usize::from(self.u8());
        match VALUES.get(b % 16) {
            Some(&v) => v,
            None => self.u64(),
        }
    }
    fn action(&mut self) -> Action {
        match self.u8() % 8 {
            0 => Action::KillThread,
            1 => Action::KillProcess,
            2 => Action::Trap,
            3 => Action::Errno(u16::from(self.u8())),
            4 => Action::Trace(u16::from(self.u8())),
            5 => Action::Log,
            // As a default action Notify is refused by both compilers (decoded, then
            // skipped); in rules it is compared.
            7 => Action::Notify,
            _ => Action::Allow,
        }
    }
    fn syscall(&mut self) -> u32 {
        let b = self.u8();
        if b >= 0xf0 {
            let i = usize::from(self.u8());
            table::SYSCALLS.get(i).map_or(0, |&(_, nr)| nr)
        } else {
            POOL.get(usize::from(b % 8)).copied().unwrap_or(0)
        }
    }
}

/// Keeps the profile inside what both compilers define alike: distinct argument
/// indexes in a rule (libseccomp refuses two conditions on one argument; runc splits
/// them into an OR), and one action for the conditional rules of a syscall (where they
/// overlap, libseccomp's precedence is its own: [`Profile::effective_rules`]), and
/// few of them (libseccomp 2.5.4 hangs on some).
fn normalize(p: &mut Profile) {
    for r in &mut p.rules {
        // One syscall once a rule (libseccomp 2.5.4 can spin adding the same
        // conditional rule twice: seed `libseccomp-slow-merge`).
        let mut nrs: Vec<u32> = Vec::new();
        r.syscalls.retain(|&nr| {
            let new = !nrs.contains(&nr);
            nrs.push(nr);
            new
        });
        let mut seen = [false; 6];
        r.args.retain(|a| {
            let s = seen.get_mut(usize::from(a.index));
            match s {
                Some(s) if !*s => {
                    *s = true;
                    true
                }
                _ => false,
            }
        });
    }
    let default = p.default;
    // (syscall, action, whether the rule has several conditions) of the kept rules.
    let mut kept: Vec<(u32, Action, bool)> = Vec::new();
    for r in &mut p.rules {
        if r.args.is_empty() || r.action == default {
            continue;
        }
        let (action, multi) = (r.action, r.args.len() > 1);
        r.syscalls.retain(|&nr| {
            let same: Vec<_> = kept.iter().filter(|k| k.0 == nr).collect();
            // libseccomp 2.5.4 spins merging two multi-condition rules of one syscall
            // (seed `libseccomp-slow-merge`) and is slow with many: at most three
            // single-condition rules, or one with several.
            let keep = same.is_empty()
                || (same.iter().all(|k| k.1 == action && !k.2) && !multi && same.len() < 3);
            if keep {
                kept.push((nr, action, multi));
            }
            keep
        });
    }
}

/// The profile and calls of a fuzz input.
pub fn decode(data: &[u8]) -> (Profile, Vec<SeccompData>) {
    let mut b = Bytes(data);
    let mut p = Profile::new(b.action());
    for _ in 0..b.u8() % 6 {
        let action = b.action();
        let syscalls = (0..1 + b.u8() % 3).map(|_| b.syscall()).collect();
        let args = (0..b.u8() % 4)
            .map(|_| {
                let index = b.u8() % 6;
                let op = match b.u8() % 7 {
                    0 => CmpOp::Ne,
                    1 => CmpOp::Lt,
                    2 => CmpOp::Le,
                    3 => CmpOp::Eq,
                    4 => CmpOp::Ge,
                    5 => CmpOp::Gt,
                    _ => CmpOp::MaskedEq,
                };
                ArgCmp {
                    index,
                    op,
                    value: b.value(),
                    value_two: b.value(),
                }
            })
            .collect();
        p.rules.push(Rule {
            syscalls,
            action,
            args,
        });
    }
    normalize(&mut p);
    let mut calls = Vec::new();
    for _ in 0..b.u8() % 8 {
        let sel = b.u8();
        let mut nr = b.syscall();
        let arch = match sel % 8 {
            0 => AUDIT_ARCH_I386,
            1 => AUDIT_ARCH_AARCH64,
            2 => {
                nr |= X32_SYSCALL_BIT;
                crate::AUDIT_ARCH_X86_64
            }
            _ => crate::AUDIT_ARCH_X86_64,
        };
        let mut args = [0u64; 6];
        for a in &mut args {
            *a = b.value();
        }
        calls.push(SeccompData {
            nr,
            arch,
            instruction_pointer: b.u64(),
            args,
        });
    }
    (p, calls)
}

/// Mismatches where libseccomp is the one that is wrong: native calls on which our
/// program gives what [`Profile::decide`] (the model, written apart from the code
/// generator) gives. libseccomp 2.5.4 merges some conditional chains of one syscall
/// wrongly (seed `libseccomp-merges-chains`).
pub fn reference_errors(profile: &Profile, d: &[Mismatch]) -> usize {
    d.iter()
        .filter(|m| {
            let native = m.input.arch == crate::AUDIT_ARCH_X86_64
                && (m.input.nr < X32_SYSCALL_BIT || m.input.nr == u32::MAX);
            native && m.ours == profile.decide(m.input.nr, &m.input.args).ret()
        })
        .count()
}

/// The fuzz body: decodes `data`, compares both compilers' verdicts on the decoded
/// calls and on [`inputs_for`] the profile. Returns how many calls were compared, or
/// `None` when our compiler refuses the profile (a jump too long).
///
/// # Panics
/// On a different verdict where ours is not the model's ([`reference_errors`]
/// excuses the others: libseccomp's own bugs), when libseccomp refuses a profile ours
/// takes, or when a program does not run.
pub fn seccomp_diff(data: &[u8]) -> Option<usize> {
    let (profile, mut calls) = decode(data);
    calls.extend(inputs_for(&profile));
    match differences(&profile, &calls) {
        Ok(d) if reference_errors(&profile, &d) == d.len() => Some(calls.len()),
        Ok(d) => panic!("ours and libseccomp differ on {profile:?}: {d:x?}"),
        Err(DiffError::Ours(_)) => None,
        Err(e) => panic!("{profile:?}: {e:?}"),
    }
}
