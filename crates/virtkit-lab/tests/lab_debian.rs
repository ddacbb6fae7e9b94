//! Lab tier: a stock distribution keeps booting (issue #12, item 7).
//!
//! vm-runner boots Debian 12 (its own cloud kernel and initramfs, a debootstrapped
//! root on a qcow2 disk; built by `cargo xtask guest`, see `virtkit_lab::debian_guest`)
//! with 2 vCPUs and 1 GiB inside the lab; the guest's report unit waits for
//! `systemctl is-system-running --wait`, prints the state (and the failed units when
//! it is not `running`) and powers off. The root image travels on the lab's payload
//! disk (`Payload::disk_file`): it does not fit in the lab's RAM. Opt out with
//! `VIRTKIT_SKIP_LAB=1` at build time (the test is then `ignored`; CI does not set it).
//! See docs/testing.md.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use virtkit_lab::{
    boot_payload, debian_guest_built, lab_opted_out, run, static_binary, BootResult, DebianReport,
    GuestBoot, Vmm, DEBIAN_CMDLINE,
};

const NAME: &str = "debian-2cpu-1g";

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_vm_runner_boots_debian_to_multi_user() {
    // The cfg above reports the skip as `ignored`; this covers a binary built without it.
    if lab_opted_out("lab_vm_runner_boots_debian_to_multi_user") {
        return;
    }
    let guest = match debian_guest_built() {
        Ok(Some(g)) => g,
        Ok(None) => panic!(
            "the Debian guest is not built: run `cargo xtask guest` (as root; it debootstraps \
             Debian {} from {} into target/debian/, about 2 minutes)",
            virtkit_lab::DEBIAN_SUITE,
            virtkit_lab::DEBIAN_MIRROR
        ),
        Err(e) => panic!("looking for the Debian guest: {e}"),
    };
    eprintln!(
        "Debian guest: {} (kernel {})",
        guest.dir.display(),
        guest.kernel_version
    );
    let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner build");
    let mut boot = GuestBoot::new(NAME, Vmm::VmRunner, 2, 1024, "./vmlinuz", "./initrd.img");
    // `VIRTKIT_DEBIAN_CMDLINE` replaces the command line, to look into a boot (for example
    // without `quiet`, to see how far the kernel and systemd got).
    boot.cmdline =
        std::env::var("VIRTKIT_DEBIAN_CMDLINE").unwrap_or_else(|_| DEBIAN_CMDLINE.into());
    boot.extra_args = vec!["--disk".into(), "path=./root.qcow2,format=qcow2".into()];
    // About 60 s in a 1-CPU lab; a wedged lab is caught by its heartbeat long before.
    boot.timeout_s = 300;
    let payload = boot_payload(std::slice::from_ref(&boot))
        .expect("building the boot payload")
        .file(vm_runner, "vm-runner")
        .disk_file(&guest.kernel, "vmlinuz")
        .disk_file(&guest.initrd, "initrd.img")
        .disk_file(&guest.disk, "root.qcow2")
        .timeout(Duration::from_secs(400));
    let out = match run(&payload) {
        Ok(out) => out,
        Err(e) if e.is_lab_failure() => panic!("LAB FAILURE (not a guest failure): {e}"),
        Err(e) => panic!("could not run the boot: {e}"),
    };
    eprintln!("venue: {} (lab run took {:.1?})", out.venue, out.elapsed);
    let r = BootResult::parse(&out.output, NAME).expect("the boot never started");
    let ctx = format!("vm-runner status {}, console:\n{}", r.status, r.console);
    let report = DebianReport::parse(&r.console).unwrap_or_else(|| {
        panic!("the Debian guest never reported its state (no VIRTKIT-DEBIAN-STATE): {ctx}")
    });
    assert_eq!(
        report.state,
        "running",
        "systemctl is-system-running said {:?}; failed units and jobs:\n{}\n--- {ctx}",
        report.state,
        report.failed.as_deref().unwrap_or("(none printed)")
    );
    assert!(
        r.console.contains("vm-runner: guest powered off"),
        "the guest did not power off: {ctx}"
    );
    assert_eq!(r.status, 0, "vm-runner did not exit 0: {ctx}");
    eprintln!(
        "{NAME}: state running at guest uptime {:.1} s ({}); vm-runner exit 0 after {:.1} s",
        report.uptime_s.unwrap_or(f64::NAN),
        report.startup.as_deref().unwrap_or("no systemd-analyze"),
        r.total_us as f64 / 1e6
    );
}
