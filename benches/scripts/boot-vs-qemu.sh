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
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo xtask boot-bench "$@"
