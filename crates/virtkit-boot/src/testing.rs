//! Test helpers (feature `test-utils`): tiny hand-made guests.

/// Where [`tiny_elf`] loads and enters its code: 2 MiB.
pub const TINY_ELF_ENTRY: u64 = 0x20_0000;

/// A minimal ELF64 "kernel": one PT_LOAD of `code` at [`TINY_ELF_ENTRY`], entered there in
/// 64-bit mode with the identity-mapped page tables the loader sets up.
///
/// ```
/// let elf = virtkit_boot::testing::tiny_elf(&[0xf4]); // hlt
/// assert_eq!(&elf[..4], b"\x7fELF");
/// ```
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let paddr = TINY_ELF_ENTRY;
    let len = code.len() as u64;
    let mut f = Vec::with_capacity(120 + code.len());
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    for v in [paddr, 64, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
    }
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, sh*
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [120u64, paddr, paddr, len, len, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(code);
    f
}
