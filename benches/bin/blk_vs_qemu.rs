//! virtio-blk side by side: vm-runner against QEMU `-M microvm` with
//! `virtio-blk-device`, the same guest, image format and tests, in ONE lab run
//! (boots interleaved). The guest runs `blk-guest-io` with O_DIRECT:
//! sequential write then read of `--mib` MiB, then 4 KiB random reads.
//! Images are created fresh inside the lab before each boot.
//!
//! ```text
//! cargo run --release -p virtkit-benches --bin blk-vs-qemu -- [--mib N] [--rounds N] [--count N]
//! ```
//! (also `benches/scripts/blk-vs-qemu.sh`). Prints each result and the ratio
//! ours/QEMU (throughput: higher is better; target >= 1.0).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use virtkit_lab::{
    guest_kernel, initramfs, run, static_binary, with_qemu_peer, BootResult, GuestBoot, Payload,
    Vmm, GUEST_CMDLINE,
};

fn arg(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name}: not a number")),
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = arg(&args, "--mib", 256)?;
    let rounds = arg(&args, "--rounds", 2)?;
    let count = arg(&args, "--count", 5000)?;
    let check = format!(
        "for t in seq-write seq-read; do /bin/blk-guest-io $t /dev/vda {mib} || exit 1; done\n\
         /bin/blk-guest-io rand-read /dev/vda {mib} {count} || exit 1\n"
    );
    let kernel = guest_kernel()?;
    let tool = static_binary("virtkit-benches", "blk-guest-io")?;
    let initrd = initramfs(&check, &[(tool, "bin/blk-guest-io")])?;
    let vm_runner = static_binary("vm-runner", "vm-runner")?;
    let disk_mib = mib + 16;

    let mut boots = Vec::new();
    let mut prepare = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for round in 0..rounds {
        for fmt in ["raw", "qcow2"] {
            for vmm in [Vmm::VmRunner, Vmm::QemuMicrovm] {
                let tag = match vmm {
                    Vmm::VmRunner => "vm-runner",
                    Vmm::QemuMicrovm => "qemu",
                };
                let name = format!("{tag}-{fmt}-{round}");
                let img = format!("{name}.{fmt}");
                let mut b = GuestBoot::new(&name, vmm, 1, 512, "./vmlinux", "./initrd");
                b.cmdline = GUEST_CMDLINE.to_string();
                b.timeout_s = 900;
                b.extra_args = match vmm {
                    Vmm::VmRunner => vec!["--disk".into(), format!("path={img},format={fmt}")],
                    Vmm::QemuMicrovm => vec![
                        "-drive".into(),
                        format!("id=d0,file={img},format={fmt},if=none"),
                        "-device".into(),
                        "virtio-blk-device,drive=d0".into(),
                    ],
                };
                labels.insert(name.clone(), (tag.to_string(), fmt.to_string()));
                prepare.insert(
                    name.clone(),
                    format!("/usr/bin/qemu-img create -q -f {fmt} {img} {disk_mib}M\n"),
                );
                boots.push(b);
            }
        }
    }
    // Create each image right before its boot, and delete it after, so the lab's
    // memory holds one image at a time.
    let mut script = String::new();
    for b in &boots {
        script.push_str(&prepare[&b.name]);
        script.push_str(&b.shell());
        script.push_str(&format!("rm -f {}.*\n", b.name));
    }
    let stamp = static_binary("virtkit-lab", "lab-stamp")?;
    let payload = with_qemu_peer(Payload::new(script).file(stamp, "lab-stamp"))?
        .file(&kernel.vmlinux, "vmlinux")
        .file(&initrd, "initrd")
        .file(&vm_runner, "vm-runner")
        .host_program("/usr/bin/qemu-img")?
        .lab_memory_mib(2048 + 2 * disk_mib as u32)
        .timeout(Duration::from_secs(3000));
    let out = run(&payload)?;
    println!("venue: {} (lab run {:.1?})", out.venue, out.elapsed);

    // test -> fmt -> vmm -> values (MB/s for sequential, IOPS for random)
    let mut results: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for b in &boots {
        let r = BootResult::parse(&out.output, &b.name)
            .with_context(|| format!("boot {} never started", b.name))?;
        if r.check_status != Some(0) {
            bail!("boot {} failed:\n{}", b.name, r.console);
        }
        let (vmm, fmt) = labels[&b.name].clone();
        for line in r
            .console
            .lines()
            .filter_map(|l| l.trim().strip_prefix("BLK-RESULT "))
        {
            let kv: BTreeMap<&str, &str> = line
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            let test = kv.get("test").copied().unwrap_or("?").to_string();
            let us: f64 = kv
                .get("us")
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            let value = if test == "rand-read" {
                kv.get("ops")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
                    / us
                    * 1e6
            } else {
                kv.get("bytes")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
                    / us
            };
            println!(
                "{}: {test} {value:.1} {}",
                b.name,
                if test == "rand-read" { "IOPS" } else { "MB/s" }
            );
            results
                .entry((test, fmt.clone(), vmm.clone()))
                .or_default()
                .push(value);
        }
    }
    println!("\n| test | format | vm-runner | QEMU microvm | ratio |");
    println!("|---|---|---|---|---|");
    for test in ["seq-write", "seq-read", "rand-read"] {
        for fmt in ["raw", "qcow2"] {
            let med = |vmm: &str| -> f64 {
                let mut v = results
                    .get(&(test.to_string(), fmt.to_string(), vmm.to_string()))
                    .cloned()
                    .unwrap_or_default();
                v.sort_by(|a, b| a.total_cmp(b));
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let (ours, peer) = (med("vm-runner"), med("qemu"));
            let unit = if test == "rand-read" { "IOPS" } else { "MB/s" };
            println!(
                "| {test} | {fmt} | {ours:.1} {unit} | {peer:.1} {unit} | {:.2}x |",
                ours / peer
            );
        }
    }
    Ok(())
}
