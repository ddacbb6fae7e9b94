//! Device access rules: v1 `devices.allow`/`devices.deny` lines, and for v2 a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program built from the same rules.
//!
//! Semantics (OCI, as runc implements them for both versions): rules apply in
//! order and a later rule overrides an earlier one; a request is allowed when
//! the last rule matching its type, major, minor and **all** its requested
//! access bits is an allow rule; nothing matching means denied.

use std::fmt;

use crate::error::{Error, Result};

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// Every device ('a').
    All,
    /// Character devices ('c'; OCI 'u' too).
    Char,
    /// Block devices ('b').
    Block,
}

impl DeviceType {
    fn letter(self) -> char {
        match self {
            DeviceType::All => 'a',
            DeviceType::Char => 'c',
            DeviceType::Block => 'b',
        }
    }
}

/// Access bits of a device rule: read, write, mknod ("rwm").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeviceAccess {
    /// 'r'.
    pub read: bool,
    /// 'w'.
    pub write: bool,
    /// 'm'.
    pub mknod: bool,
}

impl DeviceAccess {
    /// All of read, write and mknod.
    pub const ALL: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: true,
    };

    /// Mknod only ("m").
    pub const MKNOD: DeviceAccess = DeviceAccess {
        read: false,
        write: false,
        mknod: true,
    };

    /// Parses "rwm", "r", "rw"...; empty means all (as in OCI).
    pub fn parse(s: &str) -> Result<DeviceAccess> {
        if s.is_empty() {
            return Ok(DeviceAccess::ALL);
        }
        let mut a = DeviceAccess::default();
        for c in s.chars() {
            match c {
                'r' => a.read = true,
                'w' => a.write = true,
                'm' => a.mknod = true,
                _ => {
                    return Err(Error::InvalidResource {
                        field: "devices.access",
                        reason: format!("{s:?} is not made of r, w and m"),
                    })
                }
            }
        }
        Ok(a)
    }

    /// The kernel's BPF_DEVCG_ACC_* bits: mknod 1, read 2, write 4.
    pub(crate) fn bits(self) -> u32 {
        u32::from(self.mknod) | u32::from(self.read) << 1 | u32::from(self.write) << 2
    }
}

impl fmt::Display for DeviceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [(self.read, 'r'), (self.write, 'w'), (self.mknod, 'm')] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One device rule, as in OCI `linux.resources.devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRule {
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// Device type.
    pub kind: DeviceType,
    /// Major number; `None` is the wildcard '*'.
    pub major: Option<u32>,
    /// Minor number; `None` is the wildcard '*'.
    pub minor: Option<u32>,
    /// Access covered.
    pub access: DeviceAccess,
}

impl DeviceRule {
    /// An allow rule for one character device, e.g. `allow_char(1, 3, "rw")` for /dev/null.
    pub fn allow_char(major: u32, minor: u32, access: &str) -> Result<DeviceRule> {
        Ok(DeviceRule {
            allow: true,
            kind: DeviceType::Char,
            major: Some(major),
            minor: Some(minor),
            access: DeviceAccess::parse(access)?,
        })
    }

    /// An allow rule (`None` numbers are the wildcard '*').
    pub const fn allow(
        kind: DeviceType,
        major: Option<u32>,
        minor: Option<u32>,
        access: DeviceAccess,
    ) -> DeviceRule {
        DeviceRule {
            allow: true,
            kind,
            major,
            minor,
            access,
        }
    }

    /// The rule denying everything (usually first).
    pub const DENY_ALL: DeviceRule = DeviceRule {
        allow: false,
        kind: DeviceType::All,
        major: None,
        minor: None,
        access: DeviceAccess::ALL,
    };

    /// The v1 line for `devices.allow` / `devices.deny`, e.g. "c 1:3 rwm".
    pub fn v1_line(&self) -> String {
        let n = |x: Option<u32>| x.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.letter(),
            n(self.major),
            n(self.minor),
            self.access
        )
    }

    /// Whether this rule matches a request (type, numbers, and every
    /// requested access bit).
    fn matches(&self, kind: DeviceType, major: u32, minor: u32, access: DeviceAccess) -> bool {
        (self.kind == DeviceType::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access.bits() & !self.access.bits() == 0
    }
}

/// A container's default device policy, as runc sets it: everything denied, then
/// mknod of any char or block device, and read/write/mknod of null, zero, full,
/// random, urandom, tty, console, ptmx and the pts devices. A runtime appends the
/// config's own rules (a later rule wins).
pub const DEFAULT_RULES: &[DeviceRule] = &[
    DeviceRule::DENY_ALL,
    DeviceRule::allow(DeviceType::Char, None, None, DeviceAccess::MKNOD),
    DeviceRule::allow(DeviceType::Block, None, None, DeviceAccess::MKNOD),
    DeviceRule::allow(DeviceType::Char, Some(1), Some(3), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(1), Some(5), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(1), Some(7), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(1), Some(8), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(1), Some(9), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(5), Some(0), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(5), Some(1), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(5), Some(2), DeviceAccess::ALL),
    DeviceRule::allow(DeviceType::Char, Some(136), None, DeviceAccess::ALL),
];

/// The reference semantics: the verdict of `rules` for one request (the eBPF
/// program must agree, and the v1 kernel list does the same).
pub fn evaluate(
    rules: &[DeviceRule],
    kind: DeviceType,
    major: u32,
    minor: u32,
    access: DeviceAccess,
) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| r.matches(kind, major, minor, access))
        .is_some_and(|r| r.allow)
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct BpfInsn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ALU_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

/// `BPF_DEVCG_DEV_BLOCK` / `BPF_DEVCG_DEV_CHAR`.
fn type_code(kind: DeviceType) -> Option<i32> {
    match kind {
        DeviceType::All => None,
        DeviceType::Block => Some(1),
        DeviceType::Char => Some(2),
    }
}

/// Builds the cgroup device program for `rules`. The context
/// (`struct bpf_cgroup_dev_ctx`) is `{ u32 access_type; u32 major; u32 minor }`
/// with `access_type = access << 16 | type`. Registers: r2 type, r3 access,
/// r4 major, r5 minor; rules are checked last to first and the first match
/// returns its verdict; no match returns 0 (deny).
pub(crate) fn bpf_program(rules: &[DeviceRule]) -> Result<Vec<BpfInsn>> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(ALU_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(ALU_RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // The checks, each a jump past the rest of the block on mismatch.
        let mut checks: Vec<Vec<BpfInsn>> = Vec::new();
        if let Some(t) = type_code(r.kind) {
            checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, t)]);
        }
        if r.access != DeviceAccess::ALL {
            let deny_bits = i32::try_from(!r.access.bits() & 0x7).unwrap_or(0);
            checks.push(vec![
                insn(ALU_MOV_X, 1, 3, 0, 0),
                insn(ALU_AND_K, 1, 0, 0, deny_bits),
                insn(JMP_JNE_K, 1, 0, 0, 0),
            ]);
        }
        for (reg, num) in [(4u8, r.major), (5u8, r.minor)] {
            if let Some(n) = num {
                let imm = i32::try_from(n).map_err(|_| Error::InvalidResource {
                    field: "devices",
                    reason: format!("device number {n} is too large"),
                })?;
                checks.push(vec![insn(JMP_JNE_K, reg, 0, 0, imm)]);
            }
        }
        let tail = [
            insn(ALU_MOV_K, 0, 0, 0, i32::from(r.allow)),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ];
        if checks.is_empty() {
            // Matches everything: what follows is unreachable, and the
            // verifier rejects unreachable instructions.
            p.extend(tail);
            return finish(p, rules.len());
        }
        let total: usize = checks.iter().map(Vec::len).sum::<usize>() + tail.len();
        let mut emitted = 0;
        for c in checks {
            emitted += c.len();
            let mut c = c;
            if let Some(last) = c.last_mut() {
                // Skip the rest of this block.
                last.off = i16::try_from(total - emitted).unwrap_or(i16::MAX);
            }
            p.extend(c);
        }
        p.extend(tail);
    }
    p.push(insn(ALU_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    finish(p, rules.len())
}

fn finish(p: Vec<BpfInsn>, rules: usize) -> Result<Vec<BpfInsn>> {
    if p.len() > 4096 {
        return Err(Error::InvalidResource {
            field: "devices",
            reason: format!("{rules} rules make a program too long"),
        });
    }
    Ok(p)
}

/// An interpreter of the eBPF subset [`bpf_program`] emits, to check programs
/// against [`evaluate`] (unit tests, and the fuzz entry points of `testing`).
#[cfg(any(test, feature = "test-utils"))]
pub(crate) mod interp {
    use super::*;

    /// Runs the subset of eBPF that [`bpf_program`] emits.
    pub(crate) fn run(prog: &[BpfInsn], access_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..100_000 {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[usize::try_from(i.off).expect("a load offset") / 4]);
                }
                ALU_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU_MOV_K => r[dst] = i.imm as u32 as u64,
                ALU_MOV_X => r[dst] = r[src] as u32 as u64,
                JMP_JNE_K => {
                    if r[dst] != i.imm as u32 as u64 {
                        pc += usize::try_from(i.off).expect("a forward jump");
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("no exit");
    }

    /// Whether every instruction can be reached from the first one.
    pub(crate) fn all_reachable(prog: &[BpfInsn]) -> bool {
        let mut seen = vec![false; prog.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= prog.len() || seen[pc] {
                continue;
            }
            seen[pc] = true;
            match prog[pc].code {
                JMP_EXIT => {}
                JMP_JNE_K => {
                    todo.push(pc + 1);
                    todo.push(pc + 1 + usize::try_from(prog[pc].off).expect("a forward jump"));
                }
                _ => todo.push(pc + 1),
            }
        }
        seen.iter().all(|s| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::interp::{all_reachable, run};
    use super::*;
    use proptest::prelude::*;

    fn acc(bits: u32) -> DeviceAccess {
        DeviceAccess {
            mknod: bits & 1 != 0,
            read: bits & 2 != 0,
            write: bits & 4 != 0,
        }
    }

    #[test]
    fn lines_and_access() {
        let r = DeviceRule::allow_char(1, 3, "rw").unwrap();
        assert_eq!(r.v1_line(), "c 1:3 rw");
        assert_eq!(DeviceRule::DENY_ALL.v1_line(), "a *:* rwm");
        assert_eq!(DeviceAccess::parse("").unwrap(), DeviceAccess::ALL);
        assert_eq!(DeviceAccess::parse("mr").unwrap().to_string(), "rm");
        assert!(DeviceAccess::parse("rx").is_err());
        assert_eq!(DeviceAccess::parse("m").unwrap().bits(), 1);
        assert_eq!(DeviceAccess::parse("rw").unwrap().bits(), 6);
    }

    #[test]
    fn program_for_deny_all_then_null() {
        let rules = [
            DeviceRule::DENY_ALL,
            DeviceRule::allow_char(1, 3, "rw").unwrap(),
        ];
        let p = bpf_program(&rules).unwrap();
        // 6 loads, null block (type, access x3, major, minor, mov, exit) = 8,
        // deny-all block (mov, exit) = 2; the default would be unreachable.
        assert_eq!(p.len(), 16);
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 7, 2)); // not a char device: skip 7
        let req = |t: u32, a: u32, ma, mi| run(&p, a << 16 | t, ma, mi);
        assert_eq!(req(2, 2, 1, 3), 1); // read /dev/null
        assert_eq!(req(2, 6, 1, 3), 1); // read+write
        assert_eq!(req(2, 1, 1, 3), 0); // mknod not granted
        assert_eq!(req(2, 2, 1, 5), 0); // /dev/zero
        assert_eq!(req(1, 2, 1, 3), 0); // block 1:3
        assert_eq!(bpf_program(&[]).unwrap().len(), 8);
        assert_eq!(run(&bpf_program(&[]).unwrap(), 2 << 16 | 2, 1, 3), 0);
    }

    fn rule_strategy() -> impl Strategy<Value = DeviceRule> {
        (
            any::<bool>(),
            prop_oneof![
                Just(DeviceType::All),
                Just(DeviceType::Char),
                Just(DeviceType::Block)
            ],
            prop::option::of(0u32..4),
            prop::option::of(0u32..4),
            1u32..8,
        )
            .prop_map(|(allow, kind, major, minor, bits)| DeviceRule {
                allow,
                kind,
                major,
                minor,
                access: acc(bits),
            })
    }

    proptest! {
        /// The program and the reference semantics agree on every request,
        /// and every instruction is reachable (the verifier insists).
        #[test]
        fn program_matches_reference(rules in prop::collection::vec(rule_strategy(), 0..8)) {
            let p = bpf_program(&rules).unwrap();
            prop_assert!(all_reachable(&p), "{:?}", p);
            for (t, kind) in [(1, DeviceType::Block), (2, DeviceType::Char)] {
                for bits in 1..8 {
                    for major in 0..4 {
                        for minor in 0..4 {
                            let want = evaluate(&rules, kind, major, minor, acc(bits));
                            let got = run(&p, bits << 16 | t, major, minor);
                            prop_assert_eq!(got, u64::from(want), "{:?} {} {}:{} {}", rules, t, major, minor, bits);
                        }
                    }
                }
            }
        }
    }
}
