//! Guest artifacts and the lab: boot real Linux guests in tests, here and on real hosts.
//!
//! - [`guest_kernel`] builds the test guest's kernel (Debian's `linux-source-6.1`,
//!   `tinyconfig` plus `guest/kernel.config`) and [`initramfs`] packs a busybox
//!   initramfs whose `/init` prints [`INIT_MARKER`] and runs a test's script; both are
//!   cached under `target/guest/` by a hash of their inputs.
//! - [`detect_venue`] decides where Linux guests boot: on the host's `/dev/kvm` when
//!   it has hardware virtualization at full speed, else in the lab.
//! - [`run`] runs a [`Payload`] (a shell script plus files) in that venue; the lab is a
//!   QEMU TCG VM with emulated AMD SVM whose own `/dev/kvm` boots Linux, with real
//!   cgroup v2, tun, bridge and veth. Lab failures come back as [`LabError`] variants
//!   of their own; the payload's status and output as [`LabOutput`].
//! - [`debian_guest`] builds a stock Debian 12 guest (debootstrap, Debian's own cloud
//!   kernel and initramfs, the root on a qcow2 disk) cached under `target/debian/`;
//!   [`Payload::disk_file`] carries such big files into the lab on a disk of their own.
//! - [`static_binary`] builds a workspace program statically, so it runs in the lab.
//!
//! ```
//! use std::time::Duration;
//! use virtkit_lab::{run_in, Payload, Venue};
//!
//! // Runs a script directly on this host (the lab works the same way with Venue::Lab).
//! let out = run_in(Venue::Host, &Payload::new("echo hello; exit 3").timeout(Duration::from_secs(10)))?;
//! assert_eq!(out.status, 3);
//! assert!(out.output.contains("hello"));
//! # Ok::<(), virtkit_lab::LabError>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apache;
pub mod boot;
pub mod cpio;
mod debian;
mod error;
pub mod fuzz_corpus;
mod guest;
mod heartbeat;
mod lab;
mod lab_kernel;
mod payload;
pub mod registry;
pub mod soak;
mod static_bin;
mod util;
mod venue;

pub use boot::{boot_payload, BootResult, GuestBoot, Vmm};
pub use debian::{
    debian_guest, debian_guest_built, DebianGuest, DebianReport, DEBIAN_CMDLINE, DEBIAN_MIRROR,
    DEBIAN_PACKAGES, DEBIAN_STATE_MARKER, DEBIAN_SUITE,
};
pub use error::{LabError, Result};
pub use guest::{
    busybox, guest_kernel, initramfs, GuestKernel, CHECK_EXIT_MARKER, GUEST_CMDLINE, INIT_MARKER,
    KERNEL_BUILD_PACKAGES,
};
pub use heartbeat::HEARTBEAT_SILENCE_ENV;
pub use lab::{
    lab_kernel, program_with_libraries, run, run_in, shared_libraries, with_kvm_hold, LabOutput,
    LAB_CPUS, LAB_CPUS_ENV, LAB_MEMORY_MIB, LAB_MODULES, LAB_MONITOR_ENV, LAB_TCG_THREAD_ENV,
};
pub use payload::{Payload, LAB_DISK_MOUNT};
pub use soak::{soak_payload, SoakBoot, SoakReport, STUCK_MESSAGE};
pub use static_bin::{
    has_interpreter, static_binary, static_test, STATIC_RUSTFLAGS, STATIC_TARGET,
};
pub use util::{ensure_packages, workspace_root};
pub use venue::{detect_venue, probe_speed, Venue};

/// A lab payload prelude for network tests and benchmarks: a bridge `br0` (up), a
/// network namespace `peer` joined to it by a veth, with 10.99.0.1/24 and an `iperf3 -s`
/// server. Needs `/usr/sbin/ip` and `/usr/bin/iperf3` carried in
/// ([`Payload::host_program`]); prints `LAB-NET-SETUP=failed` when the bridge cannot be
/// made. All of it lives inside the lab VM.
pub const NET_PEER_SETUP: &str = r#"
IP=/usr/sbin/ip
$IP link add br0 type bridge && $IP link set br0 up || echo "LAB-NET-SETUP=failed"
$IP netns add peer
$IP link add vkpeer0 type veth peer name vkpeer1
$IP link set vkpeer1 netns peer
$IP link set vkpeer0 master br0
$IP link set vkpeer0 up
$IP -n peer link set lo up
$IP -n peer addr add 10.99.0.1/24 dev vkpeer1
$IP -n peer link set vkpeer1 up
$IP netns exec peer /usr/bin/iperf3 -s -D
sleep 1
"#;

/// The env var that opts out of the lab tests (CI does not set it).
pub const SKIP_LAB_ENV: &str = "VIRTKIT_SKIP_LAB";

/// True when `VIRTKIT_SKIP_LAB=1`: then it also prints, loudly, that `test` is skipped.
/// Lab tests call it first and return when it says so; CI never sets the variable.
pub fn lab_opted_out(test: &str) -> bool {
    let skip = std::env::var(SKIP_LAB_ENV).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: {SKIP_LAB_ENV}=1 (documented opt-out, see docs/testing.md)");
    }
    skip
}

/// The QEMU peer for benchmarks: `qemu-system-x86_64` and the firmware files that
/// `-M microvm` needs, added to a payload so QEMU runs at its host path in the lab.
pub fn with_qemu_peer(payload: Payload) -> Result<Payload> {
    let qemu = util::which("qemu-system-x86_64")
        .ok_or_else(|| LabError::QemuMissing("not on PATH".into()))?;
    let mut p = payload.host_program(qemu)?;
    for f in [
        "bios-microvm.bin",
        "qboot.rom",
        "linuxboot_dma.bin",
        "linuxboot.bin",
        "pvh.bin",
    ] {
        let path = std::path::Path::new("/usr/share/qemu").join(f);
        if path.exists() {
            p = p.host_file(path);
        }
    }
    Ok(p)
}
