#!/usr/bin/env bash
# VMM start-up CPU time: process CPU time (user + system, getrusage) from exec to right before
# the boot vCPU's first KVM_RUN, as vm-runner reports it with VM_RUNNER_STARTUP_STATS=1.
# Runs N times (default 30) and prints the median and the other quantiles.
#
#   benches/scripts/vmm-startup.sh [N]
#
# VM_RUNNER: the binary (default: a release build). KERNEL/INITRD: the guest (default: the lab's
# guest vmlinux + initramfs from target/guest when built, else a tiny ELF). The guest does not
# need to boot: only the start-up before the first KVM_RUN is measured.
set -euo pipefail
n=${1:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${VM_RUNNER:-}" ]; then
  (cd "$root" && cargo build --quiet --release -p vm-runner)
  VM_RUNNER=${CARGO_TARGET_DIR:-$root/target}/release/vm-runner
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "${KERNEL:-}" ]; then
  KERNEL=$(ls "$root"/target/guest/kernel-*/vmlinux 2>/dev/null | head -1 || true)
  INITRD=${INITRD:-$(ls -t "$root"/target/guest/initramfs-*.cpio 2>/dev/null | head -1 || true)}
fi
if [ -z "${KERNEL:-}" ]; then
  python3 "$root/benches/scripts/tiny-kernel.py" "$tmp/k" poweroff
  KERNEL=$tmp/k
fi
args=(--kernel "$KERNEL" --cpus 1 --memory 128 --serial none)
[ -n "${INITRD:-}" ] && args+=(--initrd "$INITRD")
for _ in $(seq "$n"); do
  VM_RUNNER_STARTUP_STATS=1 timeout 5 "$VM_RUNNER" "${args[@]}" </dev/null 2>&1 >/dev/null \
    | sed -n 's/.*startup cpu_ms=\([0-9.]*\).*/\1/p' || true
done | sort -n >"$tmp/t"
count=$(wc -l <"$tmp/t")
[ "$count" -gt 0 ] || { echo "no measurements (is /dev/kvm usable?)" >&2; exit 1; }
q() { sed -n "$(( ($1 * (count - 1)) / 100 + 1 ))p" "$tmp/t"; }
echo "vmm-startup: kernel=$(basename "$KERNEL") initrd=$( [ -n "${INITRD:-}" ] && basename "$INITRD" || echo none) runs=$count"
echo "vmm-startup: cpu_ms min=$(q 0) p50=$(q 50) p90=$(q 90) max=$(q 100) (target <= 8)"
