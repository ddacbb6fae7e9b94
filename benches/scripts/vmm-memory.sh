#!/usr/bin/env bash
# VMM memory overhead at 1 vCPU / 128 MiB: the process's RSS minus the guest RAM pages it has
# touched (the Rss of the 128 MiB guest mapping), read from /proc/PID/smaps while a tiny guest
# spins. Prints MiB.
#
#   benches/scripts/vmm-memory.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${VM_RUNNER:-}" ]; then
  (cd "$root" && cargo build --quiet --release -p vm-runner)
  VM_RUNNER=${CARGO_TARGET_DIR:-$root/target}/release/vm-runner
fi
tmp=$(mktemp -d)
python3 "$root/benches/scripts/tiny-kernel.py" "$tmp/k" spin
"$VM_RUNNER" --kernel "$tmp/k" --cpus 1 --memory 128 --serial none </dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
sleep "${SETTLE_S:-2}"
python3 - "$pid" <<'PY'
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
print(f"vmm-memory: rss_kib={total} guest_touched_kib={guest} "
      f"overhead_mib={(total - guest) / 1024:.2f} (target <= 5)")
PY
