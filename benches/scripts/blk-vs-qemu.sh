#!/usr/bin/env bash
# virtio-blk in the lab: vm-runner vs QEMU -M microvm (virtio-blk-device), same guest,
# raw and qcow2, O_DIRECT sequential write/read and 4 KiB random reads, one lab run.
#   benches/scripts/blk-vs-qemu.sh [--mib N] [--rounds N] [--count N]
#
# The last lines are for `cargo xtask bench` (machine-readable, one per figure, from the
# program's summary table):
#   RESULT name=seq-write-raw value=... unit=MB/s peer=qemu-microvm peer_value=... target_ratio=>=1.0 label="..."
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo run --release -q -p virtkit-benches --bin blk-vs-qemu -- "$@" | tee "$out"
# Rows of the summary: "| seq-write | raw | 99.4 MB/s | 87.1 MB/s | 1.14x |".
args="$*"
awk -F'|' -v args="${args:-default args}" '
function trim(s) { gsub(/^ +| +$/, "", s); return s }
NF == 7 && trim($2) ~ /^(seq-write|seq-read|rand-read)$/ {
    test = trim($2); fmt = trim($3)
    split(trim($4), o, " "); split(trim($5), q, " ")
    what = test == "seq-write" ? "O_DIRECT sequential write" : test == "seq-read" ? "O_DIRECT sequential read" : "4 KiB random reads"
    printf "RESULT name=%s-%s value=%s unit=%s peer=qemu-microvm peer_value=%s target_ratio=>=1.0 label=\"%s, %s image (median; %s)\"\n", test, fmt, o[1], o[2], q[1], what, fmt, args
    n++
}
END { if (n == 0) { print "blk-vs-qemu: no summary rows in the output" > "/dev/stderr"; exit 1 } }' "$out"
