//! Lab tier: high availability for a real Linux guest (issue #13).
//!
//! Inside the lab, vm-runner boots the test guest (1 vCPU, 128 MiB, a qcow2 disk) whose
//! `/check.sh` counts forever: each line `COUNT i BOOT_ID UPTIME` goes to the serial
//! console and `LINE i` to sector `i` of its disk (written through with `fsync`). Then,
//! through the control API over the socket as `ch-remote` drives Cloud Hypervisor:
//! 1. pause, `vm.snapshot`, SIGKILL of that vm-runner;
//! 2. `vm-runner --restore source_url=file:///...,resume=on` in a new process: the count
//!    goes on, same boot id, uptime not reset;
//! 3. `vm.receive-migration` on a third vm-runner and `vm.send-migration` from the
//!    second: the count goes on there, the source exits 0;
//! 4. the disk holds every line up to the last count and `qemu-img check` finds it clean;
//! 5. the guest's virtio-net, on a tap on a bridge of the lab, answers pings in all three
//!    VMMs: the restored one makes the tap again, the migration's destination joins the tap
//!    its source still holds (`virtkit_net::tap_share`).
//!
//! Opt out with `VIRTKIT_SKIP_LAB=1` at build time (the test is then `ignored`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use virtkit_lab::{
    guest_kernel, initramfs, lab_opted_out, run, static_binary, with_kvm_hold, Payload,
    GUEST_CMDLINE,
};

/// The guest's counter. With `vk_dirty=N` on the kernel command line (the kernel hands it
/// to init as an environment variable) it also rewrites an N MiB buffer in RAM each round
/// and has no disk. With `vk_net=1` it pings the lab's bridge (10.9.0.1) from 10.9.0.2
/// each round and ends its line with `net=ok` or `net=no`.
const COUNTER: &str = r#"
boot=$(cat /proc/sys/kernel/random/boot_id)
net=
if [ -n "$vk_net" ]; then
  ip link set lo up; ip addr add 10.9.0.2/24 dev eth0; ip link set eth0 up
fi
i=0
while true; do
  i=$((i+1))
  if [ -n "$vk_dirty" ]; then
    dd if=/dev/zero of=/tmp/buf bs=1M count=$vk_dirty conv=notrunc 2>/dev/null
  else
    echo "LINE $i" | dd of=/dev/vda bs=512 seek=$i count=1 conv=notrunc,fsync 2>/dev/null
  fi
  if [ -n "$vk_net" ]; then
    if ping -c 1 -W 1 10.9.0.1 >/dev/null 2>&1; then net=" net=ok"; else net=" net=no"; fi
  fi
  echo "COUNT $i $boot $(cut -d' ' -f1 /proc/uptime)$net"
  usleep 50000
done
"#;

/// Shell functions both lab scripts use.
const PRELUDE: &str = r#"
api() { # SOCKET ENDPOINT [BODY]: prints the HTTP status
  if [ -n "$3" ]; then
    /usr/bin/curl -s -o /tmp/body -w '%{http_code}' --unix-socket "$1" -X PUT -H 'Content-Type: application/json' -d "$3" "http://localhost/api/v1/$2"
  else
    /usr/bin/curl -s -o /tmp/body -w '%{http_code}' --unix-socket "$1" -X PUT "http://localhost/api/v1/$2"
  fi
}
wait_for() { # FILE PATTERN
  n=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    n=$((n+1))
    if [ $n -gt 1200 ]; then echo "SNAP-TIMEOUT waiting for '$2' in $1"; cat "$1"; return 1; fi
    usleep 100000
  done
}
wait_sock() { n=0; while [ ! -S "$1" ] && [ $n -lt 300 ]; do usleep 50000; n=$((n+1)); done; }
CMD="console=ttyS0 panic=-1 quiet"
"#;

/// The lab's side: three vm-runners, the API over curl.
const SCRIPT: &str = r#"
/usr/bin/qemu-img create -q -f qcow2 /tmp/disk.qcow2 16M
# The guest's network: a tap on a bridge of the lab, which answers its pings. The tap
# goes with A's SIGKILL; B makes it again; C joins it while B still holds it. The bridge
# has a MAC of its own: without one it takes its ports', and the guest's ARP entry for
# 10.9.0.1 would go stale when B's new tap comes.
/usr/sbin/ip link add br0 address 02:00:00:00:09:01 type bridge \
  && /usr/sbin/ip addr add 10.9.0.1/24 dev br0 \
  && /usr/sbin/ip link set br0 up || echo "SNAP-NET-SETUP failed"
NET="tap=vt0,bridge=br0,mac=52:54:00:00:09:02"
./vm-runner --api-socket /tmp/a.sock --kernel ./bzImage --initrd ./initrd --cmdline "$CMD vk_net=1" \
  --serial file:/tmp/ser --disk path=/tmp/disk.qcow2,format=qcow2 --net "$NET" 2>/tmp/a.err &
A=$!
wait_for /tmp/ser "COUNT 20 " || exit 1
echo "SNAP-PAUSE $(api /tmp/a.sock vm.pause)"
echo "SNAP-SNAPSHOT $(api /tmp/a.sock vm.snapshot '{"destination_url":"file:///tmp/snap"}') $(cat /tmp/body)"
kill -9 $A; wait $A; echo "SNAP-A-EXIT $?"
mv /tmp/ser /tmp/ser.1

RUST_LOG=virtkit_vmm=info ./vm-runner --api-socket /tmp/b.sock --restore source_url=file:///tmp/snap,resume=on 2>/tmp/b.err &
B=$!
wait_sock /tmp/b.sock
wait_for /tmp/ser "COUNT 40 " || { cat /tmp/b.err; exit 1; }
# B goes on writing into the renamed file (its open descriptor) until it stops; the
# destination creates /tmp/ser anew.
mv /tmp/ser /tmp/ser.2

./vm-runner --api-socket /tmp/c.sock 2>/tmp/c.err &
C=$!
wait_sock /tmp/c.sock
(echo "SNAP-RECEIVE $(api /tmp/c.sock vm.receive-migration '{"receiver_url":"unix:/tmp/m.sock"}')" >/tmp/recv.out) &
R=$!
wait_sock /tmp/m.sock
echo "SNAP-SEND $(api /tmp/b.sock vm.send-migration '{"destination_url":"unix:/tmp/m.sock"}') $(cat /tmp/body)"
wait $R; cat /tmp/recv.out
if ! grep -q "SNAP-RECEIVE 204" /tmp/recv.out; then
  sed 's/^/SNAP-C-ERR /' /tmp/c.err; kill -9 $B $C; exit 1
fi
wait $B; echo "SNAP-B-EXIT $?"
grep -o 'migrated to .*' /tmp/b.err
wait_for /tmp/ser "COUNT 60 " || { cat /tmp/c.err; exit 1; }
echo "SNAP-PAUSE-C $(api /tmp/c.sock vm.pause)"
cp /tmp/ser /tmp/ser.3
disk=$(ls /tmp/snap/run-*/disk0)
echo "SNAP-CHECK $(/usr/bin/qemu-img check -q "$disk" >/tmp/check.out 2>&1; echo $?)"
cat /tmp/check.out
/usr/bin/qemu-img convert -O raw "$disk" /tmp/disk.raw
for f in 1 2 3; do echo "=== SER-$f"; cat /tmp/ser.$f; echo; done
echo "=== DISK"
dd if=/tmp/disk.raw bs=512 count=200 2>/dev/null | tr '\000' '\n' | grep '^LINE '
echo "=== END"
echo "SNAP-SHUTDOWN $(api /tmp/c.sock vmm.shutdown)"
wait $C; echo "SNAP-C-EXIT $?"

# A guest rewriting a 64 MiB buffer in a loop, migrated while it does.
RUST_LOG=virtkit_vmm=info,virtkit_vcpu=debug ./vm-runner --api-socket /tmp/d.sock --kernel ./bzImage --initrd ./initrd \
  --memory 256 --cmdline "$CMD vk_dirty=64" --serial file:/tmp/dser 2>/tmp/d.err &
D=$!
wait_for /tmp/dser "COUNT 5 " || { cat /tmp/d.err; exit 1; }
RUST_LOG=virtkit_vmm=info ./vm-runner --api-socket /tmp/e.sock 2>/tmp/e.err &
E=$!
wait_sock /tmp/e.sock
(echo "DIRTY-RECEIVE $(api /tmp/e.sock vm.receive-migration '{"receiver_url":"unix:/tmp/m2.sock"}')" >/tmp/recv2.out) &
R=$!
wait_sock /tmp/m2.sock
mv /tmp/dser /tmp/dser.1
echo "DIRTY-SEND $(api /tmp/d.sock vm.send-migration '{"destination_url":"unix:/tmp/m2.sock"}') $(cat /tmp/body)"
wait $R; cat /tmp/recv2.out
wait $D; echo "DIRTY-D-EXIT $?"
grep -o 'migrated to .*' /tmp/d.err | sed 's/^/DIRTY-/'
grep -o 'migration: .*\|completing before a save.*' /tmp/d.err /tmp/e.err | sed 's/^/DIRTY-/'
n=$(grep -o 'COUNT [0-9]*' /tmp/dser.1 | tail -1 | cut -d' ' -f2)
wait_for /tmp/dser "COUNT $((n+3)) " || { cat /tmp/e.err; exit 1; }
echo "=== DSER-1"; cat /tmp/dser.1; echo
echo "=== DSER-2"; cat /tmp/dser; echo
echo "=== DEND"
echo "DIRTY-SHUTDOWN $(api /tmp/e.sock vmm.shutdown)"
wait $E; echo "DIRTY-E-EXIT $?"
"#;

/// (count, boot id, uptime) of every complete COUNT line of `text`.
fn counts(text: &str) -> Vec<(u64, String, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "COUNT").then_some(())?;
            let n = w.next()?.parse().ok()?;
            let boot = w.next()?.to_string();
            let up = w.next()?.parse().ok()?;
            Some((n, boot, up))
        })
        .collect()
}

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("=== {name}\n"))
        .unwrap_or_else(|| panic!("no {name} section in:\n{out}"));
    let rest = &out[start + name.len() + 5..];
    &rest[..rest.find("\n=== ").unwrap_or(rest.len())]
}

#[test]
#[cfg_attr(virtkit_skip_lab, ignore = "VIRTKIT_SKIP_LAB=1")]
fn lab_guest_survives_snapshot_sigkill_restore_and_live_migration() {
    if lab_opted_out("lab_guest_survives_snapshot_sigkill_restore_and_live_migration") {
        return;
    }
    let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
    let initrd = initramfs(COUNTER, &[]).expect("packing the guest initramfs");
    let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner build");
    assert!(GUEST_CMDLINE.starts_with("console=ttyS0"));
    let payload = Payload::new(format!("{PRELUDE}{SCRIPT}"))
        .file(vm_runner, "vm-runner")
        .file(&kernel.bzimage, "bzImage")
        .file(&initrd, "initrd")
        .host_program("/usr/bin/curl")
        .and_then(|p| p.host_program("/usr/bin/qemu-img"))
        .and_then(|p| p.host_program("/usr/sbin/ip"))
        .expect("carrying curl, qemu-img and ip")
        .timeout(Duration::from_secs(600));
    let payload = with_kvm_hold(payload).expect("the KVM hold");
    let out = match run(&payload) {
        Ok(out) => out,
        Err(e) if e.is_lab_failure() => panic!("LAB FAILURE (not a guest failure): {e}"),
        Err(e) => panic!("could not run the payload: {e}"),
    };
    let o = out.output.as_str();
    eprintln!("venue: {} (lab run took {:.1?})", out.venue, out.elapsed);
    for step in [
        "DIRTY-SEND 204",
        "DIRTY-RECEIVE 204",
        "DIRTY-D-EXIT 0",
        "DIRTY-E-EXIT 0",
        "SNAP-PAUSE 204",
        "SNAP-SNAPSHOT 204",
        "SNAP-SEND 204",
        "SNAP-RECEIVE 204",
        "SNAP-B-EXIT 0",
        "SNAP-PAUSE-C 204",
        "SNAP-CHECK 0",
        "SNAP-C-EXIT 0",
    ] {
        assert!(o.contains(step), "no {step:?} in the lab output:\n{o}");
    }
    // The three consoles are one stream: each VMM's output goes on from the byte where the
    // previous one stopped (a line may be split across two of them).
    let stream: String = ["SER-1", "SER-2", "SER-3"]
        .iter()
        .map(|s| section(o, s))
        .collect();
    let all = counts(&stream);
    for s in ["SER-1", "SER-2", "SER-3"] {
        assert!(
            !counts(section(o, s)).is_empty(),
            "{s} counted nothing:\n{o}"
        );
    }
    assert!(all.len() >= 60, "{o}");
    // The network works in each of the three VMMs: the last complete ping report of each
    // console is `net=ok` (the first pings of the boot may fail while ARP settles).
    assert!(!o.contains("SNAP-NET-SETUP failed"), "{o}");
    for s in ["SER-1", "SER-2", "SER-3"] {
        let last = section(o, s)
            .lines()
            .rev()
            .find(|l| l.starts_with("COUNT ") && (l.ends_with(" net=ok") || l.ends_with(" net=no")))
            .unwrap_or_else(|| panic!("{s} has no ping report:\n{o}"));
        assert!(
            last.ends_with(" net=ok"),
            "{s}: the guest's network does not work there ({last}):\n{o}"
        );
    }
    let boot = &all[0].1;
    for w in all.windows(2) {
        let ((a, ba, ua), (b, bb, ub)) = (&w[0], &w[1]);
        assert_eq!(
            *b,
            a + 1,
            "the count jumps from {a} to {b}: the guest restarted?\n{o}"
        );
        assert_eq!(ba, bb, "a new boot id after {a}: the guest rebooted\n{o}");
        assert!(
            ub >= ua,
            "uptime went back from {ua} to {ub} after {a}\n{o}"
        );
    }
    assert_eq!(&all[all.len() - 1].1, boot);
    let last = all.last().unwrap().0;
    let lines: Vec<u64> = section(o, "DISK")
        .lines()
        .filter_map(|l| l.strip_prefix("LINE ")?.trim().parse().ok())
        .collect();
    let want: Vec<u64> = (1..=lines.len() as u64).collect();
    assert_eq!(lines, want, "the disk lost lines:\n{o}");
    assert!(
        lines.len() as u64 >= last,
        "the disk has {} lines, the count reached {last}",
        lines.len()
    );
    if let Some(m) = o.lines().find(|l| l.starts_with("migrated to ")) {
        eprintln!("{m}");
    }
    // The dirtying guest goes on after its migration, same boot.
    let dirty: String = ["DSER-1", "DSER-2"].iter().map(|s| section(o, s)).collect();
    let d = counts(&dirty);
    assert!(d.len() >= 8, "{o}");
    for w in d.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "the dirtying guest's count jumps:\n{o}");
        assert_eq!(w[1].1, w[0].1, "the dirtying guest rebooted:\n{o}");
    }
    let m = o
        .lines()
        .find(|l| l.starts_with("DIRTY-migrated to "))
        .unwrap_or_else(|| panic!("no migration report for the dirtying guest:\n{o}"));
    eprintln!("64 MiB dirtying guest, 256 MiB: {m}");
    eprintln!(
        "counted to {last} across a snapshot, SIGKILL, restore and migration (boot id {boot}); \
         uptime {:.2} -> {:.2} s",
        all[0].2,
        all[all.len() - 1].2
    );
}

/// QEMU's side of the live-migration benchmark: the same guest (256 MiB, rewriting 64 MiB
/// in a loop), `migrate -d unix:` to a QEMU started with `-incoming`, monitors on fifos;
/// prints QEMU's own downtime and total time.
const QEMU_MIGRATION: &str = r#"
Q="qemu-system-x86_64 -M microvm -enable-kvm -cpu host -smp 1 -m 256 -nodefaults -no-user-config -display none -kernel ./bzImage -initrd ./initrd"
mkfifo /tmp/qin_a /tmp/qin_b
$Q -append "$CMD vk_dirty=64" -serial file:/tmp/qser_a -monitor stdio </tmp/qin_a >/tmp/qmon_a 2>&1 &
QA=$!
exec 3>/tmp/qin_a
$Q -append "$CMD vk_dirty=64" -serial file:/tmp/qser_b -monitor stdio -incoming unix:/tmp/qm.sock </tmp/qin_b >/tmp/qmon_b 2>&1 &
QB=$!
exec 4>/tmp/qin_b
wait_for /tmp/qser_a "COUNT 5 " || exit 1
wait_sock /tmp/qm.sock
echo "migrate -d unix:/tmp/qm.sock" >&3
n=0
while ! grep -q "Migration status: completed" /tmp/qmon_a && [ $n -lt 240 ]; do
  echo "info migrate" >&3; usleep 500000; n=$((n+1))
done
echo "info migrate" >&3; usleep 500000
echo "QEMU-STATUS $(grep -o 'Migration status: [a-z-]*' /tmp/qmon_a | tail -1)"
echo "QEMU-$(grep -o 'total time: [0-9]* ms' /tmp/qmon_a | tail -1)"
echo "QEMU-$(grep -o 'downtime: [0-9]* ms' /tmp/qmon_a | tail -1)"
echo "QEMU-$(grep -o 'transferred ram: [0-9]* kbytes' /tmp/qmon_a | tail -1)"
n=$(grep -o 'COUNT [0-9]*' /tmp/qser_a | tail -1 | cut -d' ' -f2)
wait_for /tmp/qser_b "COUNT $((n+3)) " && echo "QEMU-DEST-COUNTS-ON"
echo quit >&3; echo quit >&4
wait $QA $QB
"#;

/// Live-migration downtime, vm-runner against QEMU microvm in ONE lab run, the same guest
/// (Linux, 1 vCPU, 256 MiB, rewriting a 64 MiB buffer in a loop): each VMM's own report.
/// `cargo test -p virtkit-lab --test lab_snapshot -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: prints both VMMs' migration downtime"]
fn lab_live_migration_vs_qemu() {
    let kernel = guest_kernel().expect("building the guest kernel (cargo xtask guest)");
    let initrd = initramfs(COUNTER, &[]).expect("packing the guest initramfs");
    let vm_runner = static_binary("vm-runner", "vm-runner").expect("static vm-runner build");
    let ours = SCRIPT
        .find("# A guest rewriting a 64 MiB buffer")
        .map(|i| &SCRIPT[i..])
        .expect("the dirtying part of the script");
    let payload = Payload::new(format!("{PRELUDE}{QEMU_MIGRATION}{ours}"))
        .file(vm_runner, "vm-runner")
        .file(&kernel.bzimage, "bzImage")
        .file(&initrd, "initrd")
        .host_program("/usr/bin/curl")
        .expect("carrying curl")
        .timeout(Duration::from_secs(600));
    let payload = virtkit_lab::with_qemu_peer(with_kvm_hold(payload).expect("the KVM hold"))
        .expect("the QEMU peer");
    let out = run(&payload).expect("the lab run");
    for l in out.output.lines() {
        if l.starts_with("QEMU-") || l.starts_with("DIRTY-") {
            eprintln!("{l}");
        }
    }
}
