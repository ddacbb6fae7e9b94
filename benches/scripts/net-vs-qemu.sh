#!/usr/bin/env bash
# virtio-net in the lab: vm-runner vs QEMU -M microvm (virtio-net-device on a tap, no
# vhost), same guest, iperf3 TCP guest->peer and peer->guest across a bridge into a
# peer network namespace, boots interleaved in one lab run.
#   benches/scripts/net-vs-qemu.sh [--rounds N] [--seconds N] [--cpus N] [--memory MiB]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --release -q -p virtkit-benches --bin net-vs-qemu -- "$@"
