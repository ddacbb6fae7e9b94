//! `cargo xtask soak GROUP [OPTIONS]`: long runs that find what single tests miss.
//! Not part of `cargo xtask test`.
//!
//! - `vm-boots [--boots N] [--cpus N] [--memory MiB] [--kernel vmlinux|bzImage]
//!   [--huge-pages none|thp|hugetlbfs] [--no-kvm-hold] [--vmm vm-runner|qemu] [--cmdline LINE]
//!   [--lab-cpus N]`:
//!   boot the test guest with vm-runner (or the QEMU peer) N times in
//!   a row in one lab run (default 300 boots, 1 vCPU, 128 MiB, vmlinux, THP), with a
//!   watchdog that never waits on a vm-runner stuck in the kernel, and count boots
//!   that locked up a CPU (`virtkit_lab::soak`).
//! - `vm-cycles [--cycles N] [--net]`: one vm-runner, N create/boot/shutdown/delete cycles
//!   through its control API on the host, checked for leaks (`src/soak_vm.rs`).
//! - `containers [--cycles N]`: N container-runner run/delete cycles, checked for leaks
//!   (`src/soak_containers.rs`).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use virtkit_lab::{GuestBoot, SoakReport, Vmm};

const USAGE: &str = "usage: cargo xtask soak containers [--cycles N] | soak vm-cycles [--cycles N] [--net] | soak vm-boots [--boots N] [--cpus N] [--memory MiB] \
                     [--kernel vmlinux|bzImage] [--huge-pages none|thp|hugetlbfs] [--no-kvm-hold] [--vmm vm-runner|qemu] [--cmdline LINE] [--lab-cpus N]";

pub fn soak(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("vm-boots") => vm_boots(&args[1..]),
        Some("vm-cycles") => crate::soak_vm::vm_cycles(&args[1..]),
        _ => bail!("{USAGE}"),
    }
}

fn vm_boots(args: &[String]) -> Result<()> {
    let mut boots = 300u32;
    let mut cpus = 1u32;
    let mut memory = 128u32;
    let mut kernel_kind = "vmlinux".to_string();
    let mut huge_pages = "thp".to_string();
    let mut hold = true;
    let mut vmm = Vmm::VmRunner;
    let mut cmdline = None;
    let mut lab_cpus = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context(USAGE);
        match a.as_str() {
            "--boots" => boots = val()?.parse().context("--boots")?,
            "--cpus" => cpus = val()?.parse().context("--cpus")?,
            "--memory" => memory = val()?.parse().context("--memory")?,
            "--kernel" => kernel_kind = val()?.clone(),
            "--huge-pages" => huge_pages = val()?.clone(),
            "--no-kvm-hold" => hold = false,
            "--vmm" => {
                vmm = match val()?.as_str() {
                    "vm-runner" => Vmm::VmRunner,
                    "qemu" => Vmm::QemuMicrovm,
                    other => bail!("soak vm-boots: --vmm {other}: expected vm-runner or qemu"),
                }
            }
            "--cmdline" => cmdline = Some(val()?.clone()),
            "--lab-cpus" => lab_cpus = Some(val()?.parse().context("--lab-cpus")?),
            other => bail!("soak vm-boots: unknown option {other}; {USAGE}"),
        }
    }
    if boots == 0 {
        bail!("soak vm-boots: --boots must be at least 1");
    }
    let (kernel, initrd) = crate::guest()?;
    let kernel_file = match kernel_kind.as_str() {
        "vmlinux" => kernel.vmlinux,
        "bzImage" => kernel.bzimage,
        other => bail!("soak vm-boots: --kernel {other}: expected vmlinux or bzImage"),
    };
    let vm_runner = crate::timed("static vm-runner", || {
        Ok(virtkit_lab::static_binary("vm-runner", "vm-runner")?)
    })?;
    let mut boot = GuestBoot::new(
        "soak",
        vmm,
        cpus,
        memory,
        &format!("./{kernel_kind}"),
        "./initrd",
    );
    if let Some(c) = cmdline {
        boot.cmdline = c;
    }
    if vmm == Vmm::VmRunner {
        boot.extra_args = vec!["--huge-pages".into(), huge_pages.clone()];
    }
    boot.timeout_s = 60;
    let mut payload = virtkit_lab::soak_payload(&boot, boots, hold)?;
    if let Some(n) = lab_cpus {
        payload = payload.lab_cpus(n);
    }
    let payload = payload
        .file(vm_runner, "vm-runner")
        .file(kernel_file, &kernel_kind)
        .file(initrd, "initrd");
    let start = Instant::now();
    // A soak counts the lab's failures: it is never run again behind the user's back.
    std::env::set_var("VIRTKIT_LAB_RETRIES", "0");
    let out = virtkit_lab::run(&payload)?;
    let report = SoakReport::parse(&out.output);
    for d in &report.details {
        println!("{d}");
    }
    // Lockups the lab's kernel printed on its console (also outside the payload's view).
    let console_lockups = out
        .console
        .lines()
        .filter(|l| {
            virtkit_lab::soak::LOCKUP_PATTERNS
                .iter()
                .any(|p| l.contains(p))
        })
        .count();
    println!(
        "soak vm-boots: {} of {boots} boots ran ({cpus} vCPU, {memory} MiB, {kernel_kind}, \
         --huge-pages {huge_pages}, kvm hold {hold}, {vmm:?}; venue {}, {:.0?}): {} ok, {} failed, {} locked up a CPU; \
         lockup lines on the lab console: {console_lockups}",
        report.boots.len(),
        out.venue,
        start.elapsed(),
        report.boots.len() - report.failures(),
        report.failures(),
        report.lockups(),
    );
    if report.boots.len() != boots as usize || report.failures() > 0 || console_lockups > 0 {
        bail!("soak vm-boots failed");
    }
    Ok(())
}
