#!/usr/bin/env bash
# virtio-net in the lab: vm-runner vs QEMU -M microvm (virtio-net-device on a tap, no
# vhost), same guest, iperf3 TCP guest->peer and peer->guest across a bridge into a
# peer network namespace, boots interleaved in one lab run.
#   benches/scripts/net-vs-qemu.sh [--rounds N] [--seconds N] [--cpus N] [--memory MiB]
#
# The last lines are for `cargo xtask bench` (machine-readable, one per direction, from the
# program's summary table):
#   RESULT name=tcp-guest-to-peer value=... unit=Mbit/s peer=qemu-microvm peer_value=... target_ratio=>=1.0 label="..."
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo run --release -q -p virtkit-benches --bin net-vs-qemu -- "$@" | tee "$out"
# "iperf3 TCP, 4 s each way, 1 vCPU(s), 256 MiB, median of 5 rounds", then rows like
# "| guest->peer | 293 Mbit/s | 187 Mbit/s | 1.57x |".
awk -F'|' '
function trim(s) { gsub(/^ +| +$/, "", s); return s }
/^iperf3 TCP, / { shape = $0 }
NF == 6 && trim($2) ~ /^(guest->peer|peer->guest)$/ {
    dir = trim($2); name = dir; sub(/->/, "-to-", name)
    split(trim($3), o, " "); split(trim($4), q, " ")
    printf "RESULT name=tcp-%s value=%s unit=%s peer=qemu-microvm peer_value=%s target_ratio=>=1.0 label=\"%s (%s)\"\n", name, o[1], o[2], q[1], dir, shape
    n++
}
END { if (n == 0) { print "net-vs-qemu: no summary rows in the output" > "/dev/stderr"; exit 1 } }' "$out"
