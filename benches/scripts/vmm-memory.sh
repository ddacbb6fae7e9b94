#!/usr/bin/env bash
# VMM memory overhead at 1 vCPU / 128 MiB: the process's RSS minus the guest RAM pages it has
# touched (the Rss of the 128 MiB guest mapping), read from /proc/PID/smaps while a tiny guest
# spins. Prints MiB.
#
# Peer (when qemu-system-x86_64 is installed): QEMU `-M microvm`, 1 vCPU, 128 MiB, no kernel
# (its qboot firmware runs and idles with nothing to boot), measured the same way.
#
#   benches/scripts/vmm-memory.sh
#
# The last line is for `cargo xtask bench` (machine-readable):
#   RESULT name=memory-overhead value=MIB unit=MiB [peer=qemu-microvm peer_value=MIB] target_value=<=3 label="..."
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${VM_RUNNER:-}" ]; then
  (cd "$root" && cargo build --quiet --release -p vm-runner)
  VM_RUNNER=${CARGO_TARGET_DIR:-$root/target}/release/vm-runner
fi
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && { kill $pid 2>/dev/null; wait $pid 2>/dev/null; }; rm -rf "$tmp"' EXIT
# overhead NAME PID: prints the human line and leaves the overhead in MiB in $tmp/NAME.
overhead() {
  python3 - "$2" "$1" "$tmp/$1" <<'PY'
import sys
total = guest = 0
in_guest = False
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    f = line.split()
    if "-" in f[0] and len(f) >= 5 and ":" in f[3]:
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        in_guest = hi - lo == 128 << 20
    elif f[0] == "Rss:":
        kib = int(f[1])
        total += kib
        guest += kib if in_guest else 0
mib = (total - guest) / 1024
print(f"{sys.argv[2]}: rss_kib={total} guest_touched_kib={guest} "
      f"overhead_mib={mib:.2f}" + (" (target <= 3)" if sys.argv[2] == "vmm-memory" else ""))
open(sys.argv[3], "w").write(f"{mib:.2f}\n")
PY
}
# evict FILE: drop FILE's pages from the page cache, so that the binary is paged in by
# readahead as on a first start. How many of its pages a start maps depends on the size of
# the page-cache folios holding them (the kernel maps whole folios and 64 KiB around each
# fault), and those depend on how the file was last written or read: the same binary gave
# 2.57 MiB fresh from the linker and 2.89 MiB as a `cp` copy, 2.57 MiB for both once evicted.
evict() {
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1" 2>/dev/null || true
}
python3 "$root/benches/scripts/tiny-kernel.py" "$tmp/k" spin
evict "$VM_RUNNER"
"$VM_RUNNER" --kernel "$tmp/k" --cpus 1 --memory 128 --serial none </dev/null &
pid=$!
sleep "${SETTLE_S:-2}"
overhead vmm-memory "$pid"
kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
pid=

peer=
if command -v qemu-system-x86_64 >/dev/null; then
  evict "$(command -v qemu-system-x86_64)"
  qemu-system-x86_64 -M microvm -enable-kvm -m 128 -smp 1 -nodefaults -no-user-config \
    -display none -serial none </dev/null 2>"$tmp/qemu.err" &
  pid=$!
  sleep "${SETTLE_S:-2}"
  if kill -0 $pid 2>/dev/null; then
    overhead qemu-microvm "$pid"
    peer=$(cat "$tmp/qemu-microvm")
  else
    echo "vmm-memory: no QEMU peer: QEMU exited: $(tail -3 "$tmp/qemu.err")"
  fi
else
  echo "vmm-memory: no QEMU peer: qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
fi
printf 'RESULT name=memory-overhead value=%s unit=MiB%s target_value=<=3 label="RSS minus touched guest RAM, 1 vCPU, 128 MiB, idle guest"\n' \
  "$(cat "$tmp/vmm-memory")" "${peer:+ peer=qemu-microvm peer_value=$peer}"
