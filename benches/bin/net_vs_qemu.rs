//! virtio-net side by side: vm-runner against QEMU `-M microvm` with
//! `virtio-net-device` on a tap (`vhost=off`), the same guest kernel,
//! initramfs, vCPUs and memory, in ONE lab run (boots interleaved).
//!
//! Inside the lab a bridge `br0` joins a veth into the network namespace
//! `peer` (10.99.0.1, `iperf3 -s`) and the guest's tap (`vktap0`, made by
//! vm-runner; `qtap0`, made by the script before each QEMU boot). The guest
//! sets `eth0` to 10.99.0.2 and runs iperf3 TCP for `--seconds` each way:
//! guest→peer, then peer→guest (`-R`). All traffic stays inside the lab VM.
//!
//! ```text
//! cargo run --release -p virtkit-benches --bin net-vs-qemu -- [--rounds N] [--seconds N] [--cpus N] [--memory MiB] [--verbose]
//! ```
//! (also `benches/scripts/net-vs-qemu.sh`). Prints each result, the medians and
//! the ratio ours/QEMU (throughput: higher is better; target >= 1.0). With
//! `--verbose` the guest also prints iperf3's intervals and its TCP and link counters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use virtkit_lab::{
    guest_kernel, initramfs, program_with_libraries, run, static_binary, with_qemu_peer,
    BootResult, GuestBoot, Payload, Vmm, GUEST_CMDLINE, NET_PEER_SETUP,
};

/// The guest's MAC, the same under both VMMs (the peer's ARP cache stays right).
const GUEST_MAC: &str = "52:54:00:12:34:56";

fn arg(args: &[String], name: &str, default: u32) -> Result<u32> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name}: not a number")),
        None => Ok(default),
    }
}

/// Mbits/sec from an iperf3 summary line.
fn mbits(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(i.checked_sub(1)?)?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = arg(&args, "--rounds", 3)?;
    let seconds = arg(&args, "--seconds", 5)?;
    let cpus = arg(&args, "--cpus", 1)?;
    let memory = arg(&args, "--memory", 256)?;
    let verbose = args.iter().any(|a| a == "--verbose");
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    if !std::path::Path::new("/usr/bin/iperf3").exists() {
        bail!("iperf3 is not installed (apt-get install iperf3)");
    }
    let check = format!(
        "ip link set lo up\n\
         ip addr add 10.99.0.2/24 dev eth0 || exit 10\n\
         ip link set eth0 up || exit 11\n\
         ping -c 1 -W 10 10.99.0.1 >/dev/null || ping -c 2 -W 10 10.99.0.1 >/dev/null || exit 12\n\
         /usr/bin/iperf3 -c 10.99.0.1 -t {seconds} -f m > /tmp/up.txt 2>&1 || {{ cat /tmp/up.txt; exit 13; }}\n\
         echo \"IPERF-UP=$(grep receiver /tmp/up.txt | tail -1)\"\n\
         /usr/bin/iperf3 -c 10.99.0.1 -t {seconds} -f m -R > /tmp/down.txt 2>&1 || {{ cat /tmp/down.txt; exit 14; }}\n\
         echo \"IPERF-DOWN=$(grep receiver /tmp/down.txt | tail -1)\"\n\
         echo \"CLOCKSOURCE=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"\n\
         grep -i virtio /proc/interrupts | sed 's/^/IRQS /'\n\
         if [ -n \"$NET_BENCH_VERBOSE\" ]; then sed 's/^/UP /' /tmp/up.txt; sed 's/^/DOWN /' /tmp/down.txt; grep -A1 '^Tcp:' /proc/net/snmp; for f in rx_packets rx_dropped tx_packets tx_dropped; do echo \"eth0 $f $(cat /sys/class/net/eth0/statistics/$f)\"; done; fi\n"
    );
    let kernel = guest_kernel()?;
    let extra = program_with_libraries(Path::new("/usr/bin/iperf3"))?;
    let extra_refs: Vec<(PathBuf, &str)> =
        extra.iter().map(|(h, g)| (h.clone(), g.as_str())).collect();
    let initrd = initramfs(&check, &extra_refs)?;
    let vm_runner = static_binary("vm-runner", "vm-runner")?;

    let mut boots = Vec::new();
    for round in 0..rounds {
        // Alternate which VMM goes first, against drift.
        let order = if round % 2 == 0 {
            [Vmm::VmRunner, Vmm::QemuMicrovm]
        } else {
            [Vmm::QemuMicrovm, Vmm::VmRunner]
        };
        for vmm in order {
            let tag = match vmm {
                Vmm::VmRunner => "vm-runner",
                Vmm::QemuMicrovm => "qemu",
            };
            let mut b = GuestBoot::new(
                &format!("{tag}-{round}"),
                vmm,
                cpus,
                memory,
                "./vmlinux",
                "./initrd",
            );
            b.cmdline = GUEST_CMDLINE.to_string();
            if verbose {
                // Unknown `key=value` parameters become /init's environment.
                b.cmdline.push_str(" NET_BENCH_VERBOSE=1");
            }
            b.timeout_s = 120 + 4 * seconds;
            b.extra_args = match vmm {
                Vmm::VmRunner => vec![
                    "--net".into(),
                    format!("tap=vktap0,bridge=br0,mac={GUEST_MAC}"),
                ],
                Vmm::QemuMicrovm => vec![
                    "-netdev".into(),
                    "tap,id=n0,ifname=qtap0,script=no,downscript=no,vhost=off".into(),
                    "-device".into(),
                    format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
                ],
            };
            boots.push((tag, b));
        }
    }
    let mut script = String::from(NET_PEER_SETUP);
    for (tag, b) in &boots {
        if *tag == "qemu" {
            script.push_str(
                "/usr/sbin/ip tuntap add qtap0 mode tap\n\
                 /usr/sbin/ip link set qtap0 master br0\n\
                 /usr/sbin/ip link set qtap0 up\n",
            );
        }
        let tap = if *tag == "qemu" { "qtap0" } else { "vktap0" };
        if verbose {
            // Sample the tap's counters while it exists (vm-runner's goes with it).
            script.push_str(&format!(
                "(while sleep 0.5; do /usr/sbin/ip -s link show {tap} > /tmp/tap.now 2>/dev/null && cp /tmp/tap.now /tmp/tap.last; done) &\n\
                 SAMPLER=$!\n"
            ));
        }
        script.push_str(&b.shell());
        if verbose {
            script.push_str(&format!(
                "kill $SAMPLER; echo 'TAP-STATS {name}'; cat /tmp/tap.last; rm -f /tmp/tap.last\n",
                name = b.name
            ));
        }
        if *tag == "qemu" {
            script.push_str("/usr/sbin/ip link del qtap0\n");
        }
    }
    let stamp = static_binary("virtkit-lab", "lab-stamp")?;
    let payload = with_qemu_peer(Payload::new(script).file(stamp, "lab-stamp"))?
        .file(&kernel.vmlinux, "vmlinux")
        .file(&initrd, "initrd")
        .file(&vm_runner, "vm-runner")
        .host_program("/usr/sbin/ip")?
        .host_program("/usr/bin/iperf3")?
        .timeout(Duration::from_secs(
            300 + u64::from(rounds) * 2 * (60 + 2 * u64::from(seconds)),
        ));
    let out = run(&payload)?;
    println!("venue: {} (lab run {:.1?})", out.venue, out.elapsed);
    if out.output.contains("LAB-NET-SETUP=failed") {
        bail!("the lab's bridge could not be made:\n{}", out.output);
    }

    // (direction, vmm) -> Mbit/s per round
    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for (tag, b) in &boots {
        let r = BootResult::parse(&out.output, &b.name)
            .with_context(|| format!("boot {} never started", b.name))?;
        if r.check_status != Some(0) {
            bail!(
                "boot {} failed (status {}):\n{}",
                b.name,
                r.status,
                r.console
            );
        }
        println!(
            "{}: guest clocksource {}",
            b.name,
            r.value("CLOCKSOURCE").unwrap_or("?")
        );
        for (key, dir) in [("IPERF-UP", "guest->peer"), ("IPERF-DOWN", "peer->guest")] {
            let line = r.value(key).unwrap_or("");
            let v = mbits(line)
                .with_context(|| format!("boot {}: no {key} result in {line:?}", b.name))?;
            println!("{}: {dir} {v:.0} Mbit/s", b.name);
            results.entry((dir, tag)).or_default().push(v);
        }
    }
    println!(
        "\niperf3 TCP, {seconds} s each way, {cpus} vCPU(s), {memory} MiB, median of {rounds} rounds"
    );
    println!("| direction | vm-runner | QEMU microvm (tap, no vhost) | ratio |");
    println!("|---|---|---|---|");
    for dir in ["guest->peer", "peer->guest"] {
        let ours = median(
            results
                .get(&(dir, "vm-runner"))
                .cloned()
                .unwrap_or_default(),
        );
        let peer = median(results.get(&(dir, "qemu")).cloned().unwrap_or_default());
        println!(
            "| {dir} | {ours:.0} Mbit/s | {peer:.0} Mbit/s | {:.2}x |",
            ours / peer
        );
    }
    Ok(())
}
