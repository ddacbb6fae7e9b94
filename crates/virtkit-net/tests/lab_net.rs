//! Lab tier: virtio-net end to end. Inside the lab, a bridge `br0` joins a veth
//! into a peer network namespace (10.99.0.1, running an iperf3 server) and the
//! tap that vm-runner creates with `--net tap=vktap0,bridge=br0`. The guest
//! brings `eth0` up as 10.99.0.2, pings the peer and runs iperf3 both ways.
//! All traffic stays inside the lab VM. Opt out with `VIRTKIT_SKIP_LAB=1` (CI
//! does not set it); see docs/testing.md.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use virtkit_lab::{
    boot_payload, guest_kernel, initramfs, program_with_libraries, run, static_binary, BootResult,
    GuestBoot, LabError, LabOutput, Vmm, GUEST_CMDLINE, NET_PEER_SETUP,
};

const CHECK: &str = r#"
ip link set lo up
ip addr add 10.99.0.2/24 dev eth0 || exit 10
ip link set eth0 up || exit 11
echo "GUEST-MAC=$(cat /sys/class/net/eth0/address)"
if ping -c 3 -W 10 10.99.0.1 >/dev/null; then echo "PING=ok"; else echo "PING=failed"; exit 12; fi
/usr/bin/iperf3 -c 10.99.0.1 -t 3 -f m > /tmp/up.txt 2>&1 || { cat /tmp/up.txt; exit 13; }
echo "IPERF-UP=$(grep receiver /tmp/up.txt | tail -1)"
/usr/bin/iperf3 -c 10.99.0.1 -t 3 -f m -R > /tmp/down.txt 2>&1 || { cat /tmp/down.txt; exit 14; }
echo "IPERF-DOWN=$(grep receiver /tmp/down.txt | tail -1)"
echo "RX-DROPPED=$(cat /sys/class/net/eth0/statistics/rx_dropped)"
"#;

const GUEST_MAC: &str = "52:54:00:12:34:56";

struct Batch {
    run: Result<LabOutput, String>,
    lab_failure: bool,
}

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        assert!(
            std::path::Path::new("/usr/bin/iperf3").exists(),
            "iperf3 is not installed (apt-get install iperf3; .ci/run does)"
        );
        let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
        let extra =
            program_with_libraries(Path::new("/usr/bin/iperf3")).expect("iperf3's libraries");
        let extra_refs: Vec<(PathBuf, &str)> =
            extra.iter().map(|(h, g)| (h.clone(), g.as_str())).collect();
        let initrd = initramfs(CHECK, &extra_refs).expect("packing the guest initramfs");
        let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner");
        let mut b = GuestBoot::new("net", Vmm::VmRunner, 1, 256, "./vmlinux", "./initrd");
        b.cmdline = GUEST_CMDLINE.to_string();
        b.extra_args = vec![
            "--net".into(),
            format!("tap=vktap0,bridge=br0,mac={GUEST_MAC}"),
        ];
        b.timeout_s = 300;
        let payload = boot_payload(&[b])
            .expect("building the boot payload")
            .prepend_script(NET_PEER_SETUP)
            .file(&kernel.vmlinux, "vmlinux")
            .file(&initrd, "initrd")
            .file(&vm_runner, "vm-runner")
            .host_program("/usr/sbin/ip")
            .and_then(|p| p.host_program("/usr/bin/iperf3"))
            .expect("carrying ip and iperf3")
            .timeout(Duration::from_secs(900));
        let result = run(&payload);
        let lab_failure = result.as_ref().err().is_some_and(LabError::is_lab_failure);
        Batch {
            run: result.map_err(|e| e.to_string()),
            lab_failure,
        }
    })
}

fn boot() -> BootResult {
    let b = batch();
    let out = match &b.run {
        Ok(out) => {
            eprintln!("venue: {} (lab run took {:.1?})", out.venue, out.elapsed);
            out
        }
        Err(e) if b.lab_failure => panic!("LAB FAILURE (not a guest failure): {e}"),
        Err(e) => panic!("could not run the boot: {e}"),
    };
    assert!(
        !out.output.contains("LAB-NET-SETUP=failed"),
        "the lab's bridge could not be made:\n{}",
        out.output
    );
    let r = BootResult::parse(&out.output, "net")
        .unwrap_or_else(|| panic!("the boot never started:\n{}", out.output));
    assert!(r.reached_init, "guest did not reach /init:\n{}", r.console);
    r
}

/// Mbits/sec from an iperf3 summary line.
fn mbits(line: &str) -> f64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "Mbits/sec")
        .unwrap_or_else(|| panic!("no Mbits/sec in {line:?}"));
    words[i - 1].parse().unwrap()
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_net_guest_pings_a_peer_across_the_bridge() {
    let r = boot();
    assert_eq!(r.value("GUEST-MAC"), Some(GUEST_MAC), "{}", r.console);
    assert_eq!(r.value("PING"), Some("ok"), "{}", r.console);
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_net_iperf3_both_directions() {
    let r = boot();
    assert_eq!(
        r.check_status,
        Some(0),
        "guest check failed:\n{}",
        r.console
    );
    let up = mbits(r.value("IPERF-UP").unwrap());
    let down = mbits(r.value("IPERF-DOWN").unwrap());
    eprintln!("iperf3 guest->peer {up} Mbit/s, peer->guest {down} Mbit/s");
    assert!(up > 0.0 && down > 0.0, "no throughput:\n{}", r.console);
    // The driver drops frames the device hands over malformed (e.g. a merged
    // frame whose buffers it sees only in part); a correct device causes none.
    assert_eq!(
        r.value("RX-DROPPED"),
        Some("0"),
        "the guest dropped received frames:\n{}",
        r.console
    );
    assert_eq!(r.status, 0, "vm-runner exit status:\n{}", r.console);
}
