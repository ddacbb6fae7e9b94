//! Benchmark (issue #16): what the seccomp filters and the jail cost, in ONE lab run,
//! vm-runner against itself: `--seccomp off`, the default filters (`on`), and the filters
//! plus `--jail`, interleaved. Boot time to the guest's /init marker (1 vCPU, 128 MiB,
//! vmlinux), then the same three with a raw disk and a virtio-net tap on the lab's bridge:
//! 512 MiB read and written with O_DIRECT by the guest's `dd`, and iperf3 for 3 s each way.
//! Target: the filters and the jail at most 2% slower.
//!
//! `cargo test -p virtkit-lab --test lab_jail_bench -- --ignored --nocapture`
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use virtkit_lab::{
    boot_payload, guest_kernel, initramfs, program_with_libraries, run, static_binary, BootResult,
    GuestBoot, Vmm, NET_PEER_SETUP,
};

const IO: &str = r#"
ip link set lo up
ip addr add 10.99.0.2/24 dev eth0 || exit 10
ip link set eth0 up || exit 11
ping -c 1 -W 10 10.99.0.1 >/dev/null || exit 12
# busybox dd prints no rate: time 4 passes over the 128 MiB disk with /proc/uptime.
rate() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f MB/s", 512 / (b - a) }'; }
t0=$(cut -d' ' -f1 /proc/uptime)
for k in 1 2 3 4; do dd if=/dev/vda of=/dev/null bs=1M count=128 iflag=direct 2>/dev/null || exit 15; done
t1=$(cut -d' ' -f1 /proc/uptime)
for k in 1 2 3 4; do dd if=/dev/zero of=/dev/vda bs=1M count=128 oflag=direct 2>/dev/null || exit 16; done
t2=$(cut -d' ' -f1 /proc/uptime)
echo "BLK-READ $(rate $t0 $t1)"
echo "BLK-WRITE $(rate $t1 $t2)"
/usr/bin/iperf3 -c 10.99.0.1 -t 3 -f m > /tmp/up.txt 2>&1 || exit 13
echo "NET-UP $(grep receiver /tmp/up.txt | tail -1)"
/usr/bin/iperf3 -c 10.99.0.1 -t 3 -f m -R > /tmp/down.txt 2>&1 || exit 14
echo "NET-DOWN $(grep receiver /tmp/down.txt | tail -1)"
"#;

const MODES: [&str; 3] = ["off", "on", "jail"];

fn mode_args(mode: &str, name: &str) -> Vec<String> {
    match mode {
        "off" => vec!["--seccomp".into(), "off".into()],
        "on" => vec![],
        _ => vec!["--jail".into(), format!("/tmp/jail-{name}")],
    }
}

/// The number before `unit` on the line of `console` that starts with `key`.
fn value(console: &str, key: &str, unit: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(key))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| w.ends_with(unit))?;
    // busybox dd glues the unit on ("250.0MB/s"); iperf3 puts it apart.
    match words[i].strip_suffix(unit) {
        Some("") => words.get(i.checked_sub(1)?)?.parse().ok(),
        Some(n) => n.parse().ok(),
        None => None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "a benchmark: prints the cost of the filters and the jail"]
fn lab_jail_and_filters_cost() {
    let runs: u32 = std::env::var("VIRTKIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
    let plain = initramfs("", &[]).expect("packing the guest initramfs");
    let extra = program_with_libraries(Path::new("/usr/bin/iperf3")).expect("iperf3's libraries");
    let extra_refs: Vec<(PathBuf, &str)> =
        extra.iter().map(|(h, g)| (h.clone(), g.as_str())).collect();
    let io = initramfs(IO, &extra_refs).expect("packing the I/O initramfs");
    let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner");
    let mut boots = Vec::new();
    for i in 0..=runs {
        for mode in MODES {
            let name = format!("boot-{mode}-{i}");
            let mut b = GuestBoot::new(&name, Vmm::VmRunner, 1, 128, "./vmlinux", "./initrd");
            b.extra_args = mode_args(mode, &name);
            boots.push(b);
        }
    }
    for i in 0..runs {
        for mode in MODES {
            let name = format!("io-{mode}-{i}");
            let mut b = GuestBoot::new(&name, Vmm::VmRunner, 1, 256, "./vmlinux", "./initrd-io");
            b.extra_args = mode_args(mode, &name);
            b.extra_args.extend([
                "--disk".into(),
                "path=/tmp/bench.raw".into(),
                "--net".into(),
                "tap=vkbench0,bridge=br0".into(),
            ]);
            b.timeout_s = 120;
            boots.push(b);
        }
    }
    let payload = boot_payload(&boots)
        .expect("building the boot payload")
        .prepend_script("dd if=/dev/zero of=/tmp/bench.raw bs=1M count=128 2>/dev/null\n")
        .prepend_script(NET_PEER_SETUP)
        .file(&kernel.vmlinux, "vmlinux")
        .file(&plain, "initrd")
        .file(&io, "initrd-io")
        .file(&vm_runner, "vm-runner")
        .host_program("/usr/sbin/ip")
        .and_then(|p| p.host_program("/usr/bin/iperf3"))
        .expect("carrying ip and iperf3")
        .echo(false)
        .timeout(Duration::from_secs(600 + 60 * u64::from(runs)));
    let out = run(&payload).expect("the lab run");
    println!(
        "vm-runner: seccomp off / on / on + jail, one lab run (venue {})",
        out.venue
    );
    let mut boot_ms = Vec::new();
    for mode in MODES {
        let ms: Vec<f64> = (1..=runs)
            .map(|i| {
                let r = BootResult::parse(&out.output, &format!("boot-{mode}-{i}")).unwrap();
                assert!(
                    r.reached_init,
                    "{mode} run {i} did not reach /init:\n{}",
                    r.console
                );
                assert!(
                    !r.console.contains("forbidden system call"),
                    "{}",
                    r.console
                );
                r.marker_us.unwrap() as f64 / 1000.0
            })
            .collect();
        boot_ms.push(median(ms));
    }
    println!("  boot to /init (median of {runs}):");
    for (m, v) in MODES.iter().zip(&boot_ms) {
        println!("    {m:<5} {v:8.1} ms   ratio to off {:.3}", v / boot_ms[0]);
    }
    for (key, unit) in [
        ("BLK-READ", "MB/s"),
        ("BLK-WRITE", "MB/s"),
        ("NET-UP", "Mbits/sec"),
        ("NET-DOWN", "Mbits/sec"),
    ] {
        let mut med = Vec::new();
        for mode in MODES {
            let vals: Vec<f64> = (0..runs)
                .filter_map(|i| {
                    let r = BootResult::parse(&out.output, &format!("io-{mode}-{i}"))?;
                    assert!(
                        !r.console.contains("forbidden system call"),
                        "{}",
                        r.console
                    );
                    value(&r.console, key, unit)
                })
                .collect();
            assert!(!vals.is_empty(), "no {key} for {mode}:\n{}", out.output);
            med.push(median(vals));
        }
        println!(
            "  {key:<9} off {:8.1}  on {:8.1} ({:.3})  jail {:8.1} ({:.3}) {unit}",
            med[0],
            med[1],
            med[1] / med[0],
            med[2],
            med[2] / med[0]
        );
    }
}

#[test]
fn values_are_read_from_busybox_dd_and_iperf3_lines() {
    let dd = "BLK-READ 134217728 bytes (128.0MB) copied, 0.512 seconds, 250.0MB/s";
    assert_eq!(value(dd, "BLK-READ", "MB/s"), Some(250.0));
    let ip =
        "NET-UP [  5]   0.00-3.00   sec   340 MBytes   951 Mbits/sec                  receiver";
    assert_eq!(value(ip, "NET-UP", "Mbits/sec"), Some(951.0));
}
