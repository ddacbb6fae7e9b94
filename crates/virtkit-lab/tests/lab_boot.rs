//! Lab tier: boot the real test guest with vm-runner (and with the QEMU peer, which
//! proves the machinery) in one lab run, then check what each guest saw.
//!
//! All boots share ONE lab run (the lab's own boot costs seconds of TCG time), made
//! once by whichever test gets there first. Opt out with `VIRTKIT_SKIP_LAB=1` (CI does
//! not set it). See docs/testing.md.
#![allow(clippy::unwrap_used)]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use virtkit_lab::{
    boot_payload, guest_kernel, initramfs, run, static_binary, BootResult, GuestBoot, LabError,
    LabOutput, Payload, Venue, Vmm,
};

/// The guest's check: report what the guest sees.
const CHECK: &str = "echo \"GUEST-CPUS=$(grep -c ^processor /proc/cpuinfo)\"\n\
                     echo \"GUEST-MEMTOTAL-KB=$(sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo)\"\n";

/// The shapes every VMM boots: (vCPUs, MiB).
const SHAPES: &[(u32, u32)] = &[(1, 128), (2, 512)];

struct Batch {
    /// The lab run (or its failure, as text: LabError is not Clone).
    run: Result<LabOutput, String>,
    /// Whether the run failed in the lab machinery itself.
    lab_failure: bool,
    /// Why vm-runner could not be built statically, if it could not.
    vm_runner_build: Result<(), String>,
}

fn boot_name(vmm: Vmm, cpus: u32, mib: u32) -> String {
    let v = match vmm {
        Vmm::VmRunner => "vm-runner",
        Vmm::QemuMicrovm => "qemu",
    };
    format!("{v}-{cpus}cpu-{mib}m")
}

/// One lab VM at a time: the machine has few cores.
static LAB: Mutex<()> = Mutex::new(());

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
        let initrd = initramfs(CHECK, &[]).expect("packing the guest initramfs");
        // An initramfs with no /init in it: the guest cannot reach /init.
        let no_init = tempfile::NamedTempFile::new().unwrap();
        let mut w = virtkit_lab::cpio::CpioWriter::new(Vec::new());
        w.file("not-init", 0o644, b"nothing to run\n").unwrap();
        std::fs::write(no_init.path(), w.finish().unwrap()).unwrap();

        let vm_runner = static_binary("vm-runner", "vm-runner");
        let vm_runner_build = vm_runner.as_ref().map(|_| ()).map_err(|e| e.to_string());

        let mut boots = Vec::new();
        for &(cpus, mib) in SHAPES {
            boots.push(GuestBoot::new(
                &boot_name(Vmm::QemuMicrovm, cpus, mib),
                Vmm::QemuMicrovm,
                cpus,
                mib,
                "./vmlinux",
                "./initrd",
            ));
        }
        let mut bad = GuestBoot::new(
            "qemu-no-init",
            Vmm::QemuMicrovm,
            1,
            128,
            "./vmlinux",
            "./no-init",
        );
        bad.timeout_s = 30;
        boots.push(bad);
        if vm_runner.is_ok() {
            for &(cpus, mib) in SHAPES {
                boots.push(GuestBoot::new(
                    &boot_name(Vmm::VmRunner, cpus, mib),
                    Vmm::VmRunner,
                    cpus,
                    mib,
                    "./vmlinux",
                    "./initrd",
                ));
            }
            boots.push(GuestBoot::new(
                "vm-runner-bzimage-1cpu-128m",
                Vmm::VmRunner,
                1,
                128,
                "./bzImage",
                "./initrd",
            ));
            // The same guest printing its kernel log after the marker (`virtkit.dmesg`),
            // for the calibration test.
            let mut dmesg = GuestBoot::new(
                "vm-runner-dmesg-1cpu-128m",
                Vmm::VmRunner,
                1,
                128,
                "./vmlinux",
                "./initrd",
            );
            dmesg.cmdline.push_str(" virtkit.dmesg");
            boots.push(dmesg);
            let mut bad = GuestBoot::new(
                "vm-runner-no-init",
                Vmm::VmRunner,
                1,
                128,
                "./vmlinux",
                "./no-init",
            );
            bad.timeout_s = 30;
            boots.push(bad);
        }
        let sanity = r#"echo "LAB-CGROUP2=$(grep -c ' /sys/fs/cgroup cgroup2 ' /proc/mounts)""#
            .to_string()
            + "\n"
            + r#"echo "LAB-KVM=$(test -c /dev/kvm && echo yes)""#
            + "\n";
        let mut payload = boot_payload(&boots)
            .expect("building the boot payload")
            .prepend_script(&sanity)
            .file(&kernel.vmlinux, "vmlinux")
            .file(&kernel.bzimage, "bzImage")
            .file(&initrd, "initrd")
            .file(no_init.path(), "no-init")
            .timeout(Duration::from_secs(600));
        if let Ok(v) = &vm_runner {
            payload = payload.file(v, "vm-runner");
        }
        let _one_lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
        let result = run(&payload);
        let lab_failure = result.as_ref().err().is_some_and(LabError::is_lab_failure);
        Batch {
            run: result.map_err(|e| e.to_string()),
            lab_failure,
            vm_runner_build,
        }
    })
}

fn output() -> &'static LabOutput {
    let b = batch();
    match &b.run {
        Ok(out) => {
            eprintln!("venue: {} (lab run took {:.1?})", out.venue, out.elapsed);
            out
        }
        Err(e) if b.lab_failure => panic!("LAB FAILURE (not a guest failure): {e}"),
        Err(e) => panic!("could not run the boots: {e}"),
    }
}

fn boot(name: &str) -> BootResult {
    if name.starts_with("vm-runner") {
        if let Err(e) = &batch().vm_runner_build {
            panic!("the static vm-runner build failed: {e}");
        }
    }
    BootResult::parse(&output().output, name).unwrap_or_else(|| panic!("boot {name} never started"))
}

/// Asserts a boot reached /init, saw its shape, and ended with a clean power-off.
fn assert_boot(vmm: Vmm, cpus: u32, mib: u32) {
    assert_boot_named(&boot_name(vmm, cpus, mib), cpus, mib);
}

fn assert_boot_named(name: &str, cpus: u32, mib: u32) {
    let r = boot(name);
    let ctx = format!("boot {name}, console:\n{}", r.console);
    assert!(r.reached_init, "the guest did not reach /init: {ctx}");
    assert_eq!(r.check_status, Some(0), "the guest's check failed: {ctx}");
    assert_eq!(
        r.value("GUEST-CPUS"),
        Some(cpus.to_string().as_str()),
        "vCPU count: {ctx}"
    );
    let mem_kb: u64 = r
        .value("GUEST-MEMTOTAL-KB")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {ctx}"));
    let size_kb = u64::from(mib) * 1024;
    // MemTotal is the RAM minus what the kernel reserves for itself (a few MiB).
    assert!(
        mem_kb <= size_kb && mem_kb >= size_kb * 80 / 100,
        "MemTotal {mem_kb} kB for {mib} MiB: {ctx}"
    );
    // Evidence of the power-off that does not race the console: vm-runner says how the
    // guest ended the VM on its own line. QEMU exits as soon as the guest writes S5,
    // sometimes before the kernel's "reboot: Power down" line is out; the guest's /init
    // powers off (it never reboots) right after printing its check status, so QEMU's
    // exit 0 after that status is the power-off.
    let powered_off = if name.starts_with("vm-runner") {
        r.console.contains("vm-runner: guest powered off")
    } else {
        r.powered_off || (r.status == 0 && r.check_status.is_some())
    };
    assert!(powered_off, "the guest did not power off: {ctx}");
    assert_eq!(
        r.status, 0,
        "the VMM did not exit 0 after the guest's power-off: {ctx}"
    );
    eprintln!(
        "{name}: reached /init after {} us, {cpus} vCPUs, MemTotal {mem_kb} kB, exit 0 after {} us",
        r.marker_us.unwrap_or(0),
        r.total_us
    );
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_has_cgroup2_and_kvm() {
    let out = output();
    if out.venue == Venue::Lab {
        assert!(out.output.contains("LAB-CGROUP2=1\n"), "{}", out.output);
    }
    assert!(out.output.contains("LAB-KVM=yes"), "{}", out.output);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_qemu_peer_boots_1cpu_128m() {
    assert_boot(Vmm::QemuMicrovm, 1, 128);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_qemu_peer_boots_2cpu_512m() {
    assert_boot(Vmm::QemuMicrovm, 2, 512);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_vm_runner_boots_1cpu_128m() {
    assert_boot(Vmm::VmRunner, 1, 128);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_vm_runner_boots_2cpu_512m() {
    assert_boot(Vmm::VmRunner, 2, 512);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_vm_runner_boots_bzimage() {
    assert_boot_named("vm-runner-bzimage-1cpu-128m", 1, 128);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_vm_runner_guest_without_init_is_caught() {
    if let Err(e) = &batch().vm_runner_build {
        panic!("the static vm-runner build failed: {e}");
    }
    assert_no_init_caught("vm-runner-no-init");
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_qemu_peer_guest_without_init_is_caught() {
    assert_no_init_caught("qemu-no-init");
}

/// The guest kernel booted but found no /init: what assert_boot checks must reject it.
fn assert_no_init_caught(name: &str) {
    let r = BootResult::parse(&output().output, name).expect("the no-init boot never started");
    assert!(
        r.console.contains("Kernel panic"),
        "the guest kernel should have started and found no /init:\n{}",
        r.console
    );
    assert!(
        !r.reached_init,
        "a guest without /init cannot print the marker:\n{}",
        r.console
    );
    assert_eq!(r.check_status, None);
    assert!(!r.powered_off, "{}", r.console);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_timeout_is_reported_as_a_lab_failure() {
    let _one_lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let err = virtkit_lab::run_in(
        Venue::Lab,
        &Payload::new("sleep 600").timeout(Duration::from_secs(2)),
    )
    .expect_err("a 2 s limit cannot be met");
    assert!(
        matches!(
            err,
            LabError::Timeout {
                venue: Venue::Lab,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_lab_failure());
}

/// Issue #18: the guest takes what the VMM tells it (TSC frequency through kvmclock and
/// CPUID, the TSC-deadline timer, a preset `lpj`) instead of calibrating against the PIT
/// or a delay loop, so a later change cannot silently bring that slower boot back.
#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_vm_runner_guest_does_not_calibrate_what_the_vmm_tells_it() {
    let r = boot("vm-runner-dmesg-1cpu-128m");
    let log = &r.console;
    assert_eq!(r.check_status, Some(0), "the guest's check failed: {log}");
    let has = |s: &str| log.lines().any(|l| l.contains(s));
    assert!(
        has("tsc: Detected"),
        "no TSC frequency in the kernel log: {log}"
    );
    for bad in [
        "Fast TSC calibration",
        "TSC calibration using PIT",
        "Unable to calibrate against PIT",
        "tsc: Refined TSC clocksource calibration",
    ] {
        assert!(!has(bad), "the guest calibrated the TSC ({bad}): {log}");
    }
    assert!(
        has("Calibrating delay loop (skipped)"),
        "the guest ran the delay-loop calibration: {log}"
    );
    assert!(
        has("TSC deadline timer available"),
        "no TSC-deadline timer (the LAPIC timer would be calibrated): {log}"
    );
    assert!(
        has("Switched to clocksource kvm-clock"),
        "the guest does not use kvmclock: {log}"
    );
}
