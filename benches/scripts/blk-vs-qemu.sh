#!/usr/bin/env bash
# virtio-blk in the lab: vm-runner vs QEMU -M microvm (virtio-blk-device), same guest,
# raw and qcow2, O_DIRECT sequential write/read and 4 KiB random reads, one lab run.
#   benches/scripts/blk-vs-qemu.sh [--mib N] [--rounds N] [--count N]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --release -q -p virtkit-benches --bin blk-vs-qemu -- "$@"
