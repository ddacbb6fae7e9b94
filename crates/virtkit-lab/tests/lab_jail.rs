//! Lab tier: vm-runner jailed and filtered (issue #16) with a real Linux guest.
//!
//! Inside the lab (real KVM, cgroup v2), vm-runner boots the test guest with a raw disk, a
//! virtio-net tap on the lab's bridge and the API socket, under `--jail` (its own mount,
//! PID, IPC and UTS namespaces, a cgroup with limits, uid 65534 without capabilities) and
//! its default seccomp filters (`on`: any call outside a thread's list ends vm-runner with
//! status 159 and a line naming it). The guest writes and reads back its disk and pings a
//! peer across the bridge; the lab pauses and resumes it through the API, reads the jailed
//! VMM's identity from /proc, and checks that nothing is left once it powered off.
//! Snapshots and migrations under the filters run in `lab_snapshot.rs` (not jailed: the
//! jailed, unprivileged VMM has no writable place for a snapshot).
//!
//! Opt out with `VIRTKIT_SKIP_LAB=1` at build time (the test is then `ignored`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use virtkit_lab::{
    guest_kernel, initramfs, lab_opted_out, run, static_binary, with_kvm_hold, Payload,
    NET_PEER_SETUP,
};

const GUEST: &str = r#"
ip link set lo up
ip addr add 10.99.0.2/24 dev eth0 || exit 10
ip link set eth0 up || exit 11
if ping -c 2 -W 10 10.99.0.1 >/dev/null; then echo "NET=ok"; else echo "NET=failed"; exit 12; fi
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of=/dev/vda bs=1M conv=fsync 2>/dev/null || exit 13
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=1M count=4 2>/dev/null
if cmp /tmp/pat /tmp/back; then echo "DISK=ok"; else echo "DISK=failed"; exit 14; fi
echo "PHASE1-DONE"
i=0
while [ $i -lt 40 ]; do i=$((i+1)); echo "TICK $i"; usleep 100000; done
if ping -c 2 -W 10 10.99.0.1 >/dev/null; then echo "NET2=ok"; else exit 15; fi
"#;

const SCRIPT: &str = r#"
api() { # METHOD ENDPOINT: prints the HTTP status
  /usr/bin/curl -s -o /tmp/body -w '%{http_code}' --unix-socket /tmp/jail/api.sock -X "$1" "http://localhost/api/v1/$2"
}
wait_for() { # FILE PATTERN
  n=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    n=$((n+1))
    if [ $n -gt 1200 ]; then echo "JAIL-TIMEOUT waiting for '$2' in $1"; cat "$1"; cat /tmp/vm.err; return 1; fi
    usleep 100000
  done
}
dd if=/dev/zero of=/tmp/disk.raw bs=1M count=16 2>/dev/null
./vm-runner --kernel ./bzImage --initrd ./initrd --cmdline "console=ttyS0 panic=-1 quiet" \
  --memory 128 --serial file:/tmp/ser --disk path=/tmp/disk.raw \
  --net tap=vktap0,bridge=br0,mac=52:54:00:12:34:56 \
  --api-socket /tmp/jail/api.sock --jail /tmp/jail --jail-id labjail \
  --jail-memory 384 --jail-cpus 1 --jail-pids 64 2>/tmp/vm.err &
V=$!
wait_for /tmp/ser "PHASE1-DONE" || exit 1
P=$(head -1 /sys/fs/cgroup/virtkit-jail/labjail/cgroup.procs)
echo "JAIL-UID $(grep '^Uid:' /proc/$P/status | tr -s '\t ' ' ')"
echo "JAIL-CAPEFF $(grep '^CapEff:' /proc/$P/status | cut -f2)"
echo "JAIL-SECCOMP $(grep '^Seccomp:' /proc/$P/status | cut -f2)"
echo "JAIL-ROOT $(ls /proc/$P/root | tr '\n' ' ')"
echo "JAIL-MEMMAX $(cat /sys/fs/cgroup/virtkit-jail/labjail/memory.max)"
echo "JAIL-PAUSE $(api PUT vm.pause)"
a=$(grep -c TICK /tmp/ser); sleep 1; b=$(grep -c TICK /tmp/ser)
echo "JAIL-PAUSED-TICKS $a $b"
echo "JAIL-INFO $(api GET vm.info) $(grep -o '"state":"[A-Za-z]*"' /tmp/body)"
echo "JAIL-RESUME $(api PUT vm.resume)"
wait $V; echo "JAIL-EXIT $?"
cat /tmp/vm.err
echo "=== SER"; cat /tmp/ser; echo "=== END"
echo "JAIL-LEFT-ROOT $(ls -d /tmp/jail 2>/dev/null || echo none)"
echo "JAIL-LEFT-CGROUP $(ls -d /sys/fs/cgroup/virtkit-jail/labjail 2>/dev/null || echo none)"
echo "JAIL-LEFT-TAP $(ls -d /sys/class/net/vktap0 2>/dev/null || echo none)"
"#;

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_jailed_filtered_vm_runs_disk_network_and_api() {
    if lab_opted_out("lab_jailed_filtered_vm_runs_disk_network_and_api") {
        return;
    }
    let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
    let initrd = initramfs(GUEST, &[]).expect("packing the guest initramfs");
    let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner build");
    let payload = Payload::new(SCRIPT)
        .prepend_script(NET_PEER_SETUP)
        .file(vm_runner, "vm-runner")
        .file(&kernel.bzimage, "bzImage")
        .file(&initrd, "initrd")
        .host_program("/usr/bin/curl")
        .and_then(|p| p.host_program("/usr/sbin/ip"))
        .and_then(|p| p.host_program("/usr/bin/iperf3"))
        .expect("carrying curl, ip and iperf3")
        .timeout(Duration::from_secs(300));
    let payload = with_kvm_hold(payload).expect("the KVM hold");
    let out = match run(&payload) {
        Ok(out) => out,
        Err(e) if e.is_lab_failure() => panic!("LAB FAILURE (not a guest failure): {e}"),
        Err(e) => panic!("could not run the payload: {e}"),
    };
    let o = out.output.as_str();
    eprintln!("venue: {} (lab run took {:.1?})", out.venue, out.elapsed);
    assert!(!o.contains("LAB-NET-SETUP=failed"), "{o}");
    assert!(
        !o.contains("forbidden system call"),
        "a seccomp filter caught a call (a list needs it, or it is a bug):\n{o}"
    );
    for step in [
        "NET=ok",
        "DISK=ok",
        "NET2=ok",
        "VIRTKIT-CHECK-EXIT=0",
        "JAIL-UID Uid: 65534 65534 65534 65534",
        "JAIL-CAPEFF 0000000000000000",
        "JAIL-SECCOMP 2",
        "JAIL-MEMMAX 402653184",
        "JAIL-PAUSE 204",
        "JAIL-INFO 200 \"state\":\"Paused\"",
        "JAIL-RESUME 204",
        "JAIL-EXIT 0",
        "vm-runner: guest powered off",
        "JAIL-LEFT-ROOT none",
        "JAIL-LEFT-CGROUP none",
        "JAIL-LEFT-TAP none",
    ] {
        assert!(o.contains(step), "no {step:?} in the lab output:\n{o}");
    }
    let ticks = o
        .lines()
        .find_map(|l| l.strip_prefix("JAIL-PAUSED-TICKS "))
        .unwrap_or_else(|| panic!("no tick counts:\n{o}"));
    let t: Vec<u32> = ticks
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(t[0], t[1], "the guest ran on while paused:\n{o}");
    let root = o
        .lines()
        .find_map(|l| l.strip_prefix("JAIL-ROOT "))
        .unwrap_or_else(|| panic!("no jail root listing:\n{o}"));
    let mut entries: Vec<&str> = root.split_whitespace().collect();
    entries.sort_unstable();
    // The payload's files (bzImage, initrd) sit in the lab's working directory, the disk
    // and serial file under /tmp: the root holds only those trees, /dev, /proc, the socket.
    for e in &entries {
        assert!(
            ["api.sock", "dev", "proc", "tmp", "payload"].contains(e),
            "unexpected {e:?} in the jail's root: {entries:?}\n{o}"
        );
    }
    assert!(
        entries.contains(&"api.sock") && entries.contains(&"dev"),
        "{entries:?}"
    );
}
