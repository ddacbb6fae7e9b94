//! CPUID for each vCPU: KVM's supported set, filtered the way production VMMs do.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Errors from building CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot get KVM's supported CPUID: {0}")]
    Supported(kvm_ioctls::Error),
}

/// "KVMKVMKVM\0\0\0" as ebx, ecx, edx.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const HYPERVISOR_BIT: u32 = 1 << 31;
const HTT_BIT: u32 = 1 << 28;
const TSC_DEADLINE_BIT: u32 = 1 << 24;

/// The vCPU's place in the VM's topology: one socket of `cpus` cores, one thread each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's APIC id (its index).
    pub apic_id: u8,
    /// Number of vCPUs in the VM.
    pub cpus: u8,
}

fn bits_for(n: u32) -> u32 {
    // ceil(log2(n)), 0 for n <= 1.
    32 - n.saturating_sub(1).leading_zeros()
}

fn set_cache_sharing(e: &mut kvm_cpuid_entry2, cpus: u32, with_cores: bool) {
    let level = (e.eax >> 5) & 0x7;
    if level == 0 {
        return;
    }
    // Threads sharing this cache, minus one: L1/L2 per core, L3 across the socket.
    let sharing = if level >= 3 { cpus - 1 } else { 0 };
    e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
    if with_cores {
        e.eax = (e.eax & !(0x3f << 26)) | (((cpus - 1) & 0x3f) << 26);
    }
}

/// Filters `cpuid` in place for the vCPU at `topo`.
pub fn filter(cpuid: &mut CpuId, topo: Topology) {
    let cpus = u32::from(topo.cpus.max(1));
    let apic = u32::from(topo.apic_id);
    let core_bits = bits_for(cpus);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | ((1 << core_bits).max(cpus) << 16);
                e.ecx |= HYPERVISOR_BIT;
                if cpus > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            0x4 => set_cache_sharing(e, cpus, true),
            // No performance monitoring in the guest.
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                e.edx = apic;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = cpus;
                        e.ecx = 1 | (2 << 8);
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            0x4000_0000 => {
                e.eax = e.eax.max(0x4000_0001);
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xff) | (cpus - 1);
            }
            0x8000_001d => set_cache_sharing(e, cpus, false),
            0x8000_001e => {
                e.eax = apic;
                e.ebx = apic & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// Advertises the TSC-deadline LAPIC timer (CPUID.1:ECX bit 24). KVM emulates it whenever it
/// has KVM_CAP_TSC_DEADLINE_TIMER but leaves the bit to userspace; Linux needs it on boards
/// without a PIT to calibrate against (hardware-reduced ACPI).
pub fn set_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= TSC_DEADLINE_BIT;
        }
    }
}

/// Finds an entry.
pub fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn filters_topology_leaves() {
        let mut c = CpuId::from_entries(&[
            entry(1, 0, 0),
            entry(4, 0, 1 << 5),
            entry(4, 3, 3 << 5),
            entry(0xb, 0, 0),
            entry(0xb, 1, 0),
            entry(0xa, 0, 7),
            entry(0x4000_0000, 0, 0),
            entry(0x8000_001d, 2, 3 << 5),
        ])
        .unwrap();
        filter(
            &mut c,
            Topology {
                apic_id: 2,
                cpus: 3,
            },
        );
        let l1 = find(&c, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(l1.edx & HTT_BIT, 0);
        assert_eq!((find(&c, 4, 0).unwrap().eax >> 14) & 0xfff, 0);
        assert_eq!((find(&c, 4, 3).unwrap().eax >> 14) & 0xfff, 2);
        assert_eq!(find(&c, 4, 3).unwrap().eax >> 26, 2);
        let b1 = find(&c, 0xb, 1).unwrap();
        assert_eq!((b1.eax, b1.ebx, b1.ecx, b1.edx), (2, 3, 0x201, 2));
        assert_eq!(find(&c, 0xb, 0).unwrap().edx, 2);
        assert_eq!(find(&c, 0xa, 0).unwrap().eax, 0);
        let sig = find(&c, 0x4000_0000, 0).unwrap();
        let mut s = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s[..9], b"KVMKVMKVM");
        assert_eq!((find(&c, 0x8000_001d, 2).unwrap().eax >> 14) & 0xfff, 2);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            edx: HTT_BIT,
            ..Default::default()
        }])
        .unwrap();
        filter(
            &mut c,
            Topology {
                apic_id: 0,
                cpus: 1,
            },
        );
        assert_eq!(find(&c, 1, 0).unwrap().edx & HTT_BIT, 0);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
