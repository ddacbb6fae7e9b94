#!/usr/bin/env bash
# Boot to the guest's /init marker: vm-runner against QEMU `-M microvm` with KVM, with
# the same guest kernel, initramfs, vCPUs and memory, side by side in ONE lab run
# (boots interleaved, one warm-up each). Prints per-VMM medians and the ratio
# (target: vm-runner <= 0.8x QEMU). Times run from the VMM's exec to the marker line
# on its serial console, taken inside the lab by the static `lab-stamp` timer.
#
#   benches/scripts/boot-vs-qemu.sh [--runs N] [--cpus N] [--memory MiB] [--kernel vmlinux|bzImage]
#
# Defaults: 5 runs, 1 vCPU, 128 MiB, vmlinux. Needs what `cargo xtask test` needs
# (see docs/testing.md); the guest kernel build takes minutes the first time.
#
# The last line is for `cargo xtask bench` (machine-readable, one per figure):
#   RESULT name=... value=... unit=ms peer=qemu-microvm peer_value=... target_ratio=<=0.80 label="..."
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo xtask boot-bench "$@" | tee "$out"
# From boot-bench's summary: "boot to /init marker: 1 vCPU(s), 128 MiB, vmlinux, 5 runs each ..."
# and "  vm-runner  median   1609.0 ms ..." / "  qemu       median   2018.0 ms ...".
awk '
/^boot to \/init marker:/ {
    sub(/^boot to \/init marker: /, ""); sub(/ \(venue.*/, ""); shape = $0
    cpus = $1; mem = $3; kernel = $5; sub(/,$/, "", kernel)
}
$1 == "vm-runner" && $2 == "median" { ours = $3 }
$1 == "qemu" && $2 == "median" { peer = $3 }
END {
    if (ours == "" || peer == "") { print "boot-vs-qemu: no medians in the output" > "/dev/stderr"; exit 1 }
    printf "RESULT name=boot-%svcpu-%smib-%s value=%s unit=ms peer=qemu-microvm peer_value=%s target_ratio=<=0.80 label=\"exec to /init marker (median): %s\"\n", cpus, mem, kernel, ours, peer, shape
}' "$out"
