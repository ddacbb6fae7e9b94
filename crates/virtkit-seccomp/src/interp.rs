//! A classic BPF interpreter for seccomp filters: runs a program (ours, libseccomp's,
//! any) on a `struct seccomp_data` and gives the filter's return value, as the kernel
//! would. It takes every instruction the kernel's seccomp checker accepts.

use crate::bpf::Insn;
use crate::Error;

/// The kernel's `struct seccomp_data`: what a seccomp filter sees of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SeccompData {
    /// The syscall number (x32 calls have bit 30 set).
    pub nr: u32,
    /// The `AUDIT_ARCH_*` value of the calling convention.
    pub arch: u32,
    /// The instruction pointer at the call.
    pub instruction_pointer: u64,
    /// The six arguments.
    pub args: [u64; 6],
}

impl SeccompData {
    /// A native x86_64 call.
    pub fn x86_64(nr: u32, args: [u64; 6]) -> Self {
        SeccompData {
            nr,
            arch: crate::bpf::AUDIT_ARCH_X86_64,
            instruction_pointer: 0,
            args,
        }
    }

    /// The 64 bytes the filter loads from (host byte order, as the kernel lays them out).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        b[8..16].copy_from_slice(&self.instruction_pointer.to_ne_bytes());
        for (chunk, arg) in b[16..].chunks_exact_mut(8).zip(self.args) {
            chunk.copy_from_slice(&arg.to_ne_bytes());
        }
        b
    }
}

const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ST: u16 = 0x02;
const BPF_STX: u16 = 0x03;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_IMM: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_MEM: u16 = 0x60;
const BPF_LEN: u16 = 0x80;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_A: u16 = 0x10;
const MEM_WORDS: usize = 16;

/// Runs `prog` on `data` and returns the filter's return value.
///
/// # Errors
/// [`Error::BadProgram`] for what the kernel's checker would refuse: an instruction it
/// does not allow, a load outside `seccomp_data` or unaligned, a jump out of the
/// program, falling off its end, a scratch slot out of range.
pub fn run(prog: &[Insn], data: &SeccompData) -> Result<u32, Error> {
    let bytes = data.to_bytes();
    let bad = |pc: usize, what: &'static str| Error::BadProgram { pc, what };
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; MEM_WORDS];
    let mut pc = 0usize;
    loop {
        let i = *prog.get(pc).ok_or(bad(pc, "runs off the end"))?;
        let next = pc.checked_add(1).ok_or(bad(pc, "pc overflow"))?;
        let slot = |k: u32| usize::try_from(k).ok().filter(|&s| s < MEM_WORDS);
        let class = i.code & 0x07;
        match class {
            BPF_LD | BPF_LDX => {
                let v = match i.code & 0xe0 {
                    BPF_ABS if class == BPF_LD && i.code & 0x18 == BPF_W => {
                        let o = usize::try_from(i.k).map_err(|_| bad(pc, "load offset"))?;
                        if o % 4 != 0 {
                            return Err(bad(pc, "unaligned load"));
                        }
                        let w = o
                            .checked_add(4)
                            .and_then(|end| bytes.get(o..end))
                            .ok_or(bad(pc, "load outside seccomp_data"))?;
                        u32::from_ne_bytes([w[0], w[1], w[2], w[3]])
                    }
                    BPF_IMM => i.k,
                    BPF_MEM => mem[slot(i.k).ok_or(bad(pc, "scratch slot"))?],
                    BPF_LEN => 64,
                    _ => return Err(bad(pc, "load mode")),
                };
                if class == BPF_LD {
                    a = v;
                } else {
                    x = v;
                }
            }
            BPF_ST | BPF_STX => {
                let s = slot(i.k).ok_or(bad(pc, "scratch slot"))?;
                mem[s] = if class == BPF_ST { a } else { x };
            }
            BPF_ALU => {
                let src = if i.code & BPF_X != 0 { x } else { i.k };
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    // Division by a zero X ends the filter with 0 in the kernel.
                    0x30 => match a.checked_div(src) {
                        Some(v) => v,
                        None => return Ok(0),
                    },
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => match a.checked_rem(src) {
                        Some(v) => v,
                        None => return Ok(0),
                    },
                    0xa0 => a ^ src,
                    _ => return Err(bad(pc, "ALU operation")),
                };
            }
            BPF_JMP => {
                let src = if i.code & BPF_X != 0 { x } else { i.k };
                let skip = match i.code & 0xf0 {
                    0x00 => i.k,
                    0x10 => u32::from(if a == src { i.jt } else { i.jf }),
                    0x20 => u32::from(if a > src { i.jt } else { i.jf }),
                    0x30 => u32::from(if a >= src { i.jt } else { i.jf }),
                    0x40 => u32::from(if a & src != 0 { i.jt } else { i.jf }),
                    _ => return Err(bad(pc, "jump operation")),
                };
                pc = usize::try_from(skip)
                    .ok()
                    .and_then(|s| next.checked_add(s))
                    .filter(|&t| t < prog.len())
                    .ok_or(bad(pc, "jump out of the program"))?;
                continue;
            }
            BPF_RET => {
                return match i.code & 0x18 {
                    BPF_K => Ok(i.k),
                    BPF_A => Ok(a),
                    _ => Err(bad(pc, "return source")),
                };
            }
            BPF_MISC => match i.code & 0xf8 {
                0x00 => x = a, // TAX
                0x80 => a = x, // TXA
                _ => return Err(bad(pc, "misc operation")),
            },
            _ => return Err(bad(pc, "instruction class")),
        }
        pc = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::op;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn { code, jt, jf, k }
    }

    #[test]
    fn loads_see_the_seccomp_data_layout() {
        let d = SeccompData {
            nr: 7,
            arch: 0xc000_003e,
            instruction_pointer: 0x1122_3344_5566_7788,
            args: [1, 2, 3, 4, 5, 0xaabb_ccdd_0000_0006],
        };
        let load = |off| run(&[ins(op::LD_W_ABS, 0, 0, off), ins(0x16, 0, 0, 0)], &d);
        assert_eq!(load(0).unwrap(), 7);
        assert_eq!(load(4).unwrap(), 0xc000_003e);
        assert_eq!(load(8).unwrap(), 0x5566_7788);
        assert_eq!(load(12).unwrap(), 0x1122_3344);
        assert_eq!(load(16).unwrap(), 1);
        assert_eq!(load(56).unwrap(), 6);
        assert_eq!(load(60).unwrap(), 0xaabb_ccdd);
        assert!(load(64).is_err());
        assert!(load(2).is_err());
    }

    #[test]
    fn bad_programs_are_errors_not_panics() {
        let d = SeccompData::default();
        assert!(run(&[], &d).is_err());
        assert!(run(&[ins(op::JEQ_K, 5, 5, 0)], &d).is_err());
        assert!(run(&[ins(0x05, 0, 0, u32::MAX)], &d).is_err()); // JA far
        assert!(run(&[ins(0x02, 0, 0, 16)], &d).is_err()); // ST M[16]
        assert!(run(&[ins(0xff, 0, 0, 0)], &d).is_err());
        // Scratch memory, X, ALU and RET A.
        let p = [
            ins(0x00, 0, 0, 40),  // A = 40
            ins(0x02, 0, 0, 3),   // M[3] = A
            ins(0x01, 0, 0, 2),   // X = 2
            ins(0x60, 0, 0, 3),   // A = M[3]
            ins(0x3c, 0, 0, 0),   // A /= X
            ins(0x04, 0, 0, 1),   // A += 1
            ins(0x45, 1, 0, 0x1), // JSET 1 -> skip
            ins(0x06, 0, 0, 99),
            ins(0x16, 0, 0, 0), // RET A
        ];
        assert_eq!(run(&p, &d).unwrap(), 21);
    }
}
