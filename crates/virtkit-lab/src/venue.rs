//! Where Linux guests boot: directly on the host's `/dev/kvm`, or in the lab.
//!
//! The host qualifies when `/proc/cpuinfo` shows `vmx` or `svm` and a tiny KVM guest
//! (a counting loop in real mode) runs at hardware speed. Hosts whose `/dev/kvm` is a
//! software hypervisor (like the project's build machines) run guest code about 300
//! times slower and cannot boot Linux: there, Linux guests boot in the lab.
//! `VIRTKIT_VENUE=host|lab` overrides the decision.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

use crate::error::{LabError, Result};

/// Where Linux guests boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Venue {
    /// Directly on this host's `/dev/kvm`.
    Host,
    /// Inside the lab: a QEMU TCG VM with emulated AMD SVM, whose own `/dev/kvm` boots Linux.
    Lab,
}

impl fmt::Display for Venue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Venue::Host => "host",
            Venue::Lab => "lab",
        })
    }
}

/// Iterations of the probe loop; real hardware runs them in well under a millisecond.
const PROBE_ITERATIONS: u32 = 200_000;
/// A host that needs longer than this is too slow to boot Linux.
const PROBE_LIMIT: Duration = Duration::from_millis(20);

/// Decides (once per process) where Linux guests boot, and says why on stderr.
pub fn detect_venue() -> Result<Venue> {
    static VENUE: OnceLock<std::result::Result<(Venue, String), String>> = OnceLock::new();
    let found = VENUE.get_or_init(|| decide().map_err(|e| e.to_string()));
    match found {
        Ok((venue, why)) => {
            eprintln!("virtkit-lab: venue {venue} ({why})");
            Ok(*venue)
        }
        Err(e) => Err(LabError::BadInput(e.clone())),
    }
}

fn decide() -> Result<(Venue, String)> {
    match std::env::var("VIRTKIT_VENUE").ok().as_deref() {
        Some("host") => return Ok((Venue::Host, "VIRTKIT_VENUE=host".into())),
        Some("lab") => return Ok((Venue::Lab, "VIRTKIT_VENUE=lab".into())),
        Some("") | None => {}
        Some(other) => {
            return Err(LabError::BadInput(format!(
                "VIRTKIT_VENUE={other:?}: expected `host` or `lab`"
            )));
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return Ok((Venue::Lab, "no vmx/svm in /proc/cpuinfo".into()));
    }
    match probe_speed() {
        Ok(t) if t <= PROBE_LIMIT => Ok((
            Venue::Host,
            format!("vmx/svm present, probe loop took {t:?}"),
        )),
        Ok(t) => Ok((
            Venue::Lab,
            format!("vmx/svm present but the probe loop took {t:?}"),
        )),
        Err(e) => Ok((
            Venue::Lab,
            format!("vmx/svm present but the KVM probe failed: {e}"),
        )),
    }
}

/// Times a real-mode guest that counts `PROBE_ITERATIONS` down and halts.
pub fn probe_speed() -> std::result::Result<Duration, String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    const MEM: usize = 0x10000;
    // SAFETY: an anonymous private mapping; the result is checked before use.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let result = (|| {
        let n = PROBE_ITERATIONS.to_le_bytes();
        // mov ecx, N ; 1: dec ecx ; jnz 1b ; hlt
        let code = [
            0x66, 0xb9, n[0], n[1], n[2], n[3], 0x66, 0x49, 0x75, 0xfc, 0xf4,
        ];
        // SAFETY: `mem` is a live MEM-byte mapping and the code fits at offset 0x1000.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(0x1000), code.len())
        };
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: mem as u64,
            flags: 0,
        };
        // SAFETY: the region maps memory we own and that outlives the VM (the VM is
        // dropped before the mapping is unmapped below).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        let start = Instant::now();
        loop {
            match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
                VcpuExit::Hlt => return Ok(start.elapsed()),
                // Anything else (an interrupt window, a stray exit): keep going, bounded.
                other => {
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err(format!("probe guest did not halt (last exit {other:?})"));
                    }
                }
            }
        }
    })();
    drop(vm);
    // SAFETY: `mem` came from mmap above with this length and is no longer used.
    unsafe { libc::munmap(mem, MEM) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(Venue::Host.to_string(), "host");
        assert_eq!(Venue::Lab.to_string(), "lab");
    }

    #[test]
    fn kvm_probe_runs_the_tiny_guest() {
        // The host's /dev/kvm (real or software) must run the counting loop to its HLT.
        let t = probe_speed().expect("the KVM speed probe needs /dev/kvm");
        eprintln!("probe loop of {PROBE_ITERATIONS} iterations took {t:?}");
        assert!(t > Duration::ZERO);
    }
}
