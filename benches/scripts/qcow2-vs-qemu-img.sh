#!/usr/bin/env bash
# Side-by-side: virtkit-img (virtkit-qcow2) against qemu-img on the same
# files, same machine, same run. Prints times/IOPS and ratios.
#
# Usage: benches/scripts/qcow2-vs-qemu-img.sh [SIZE_MIB] [WORKDIR]
#   SIZE_MIB  size of the convert input (default 1024 = 1 GiB; half data, half zeroes)
#   WORKDIR   scratch folder on a file system with O_DIRECT (not tmpfs); default a temp dir
# Needs: qemu-img (qemu-utils), cargo. Builds virtkit-img in release mode.
#
# Env (smaller values for a quick run; `cargo xtask bench --quick` sets them):
#   CONVERT_RUNS  convert runs, best taken (default 3)
#   IMAGE_MIB     size of the fully allocated image for the read test (default 1024)
#   READS         4 KiB reads per bench (default 200000)
#   ALLOC_WRITES  first-allocation 4 KiB writes per bench (default 16000)
#
# The last lines are for `cargo xtask bench` (machine-readable, one per figure):
#   RESULT name=... value=... unit=... peer=qemu-img peer_value=... target_ratio=... label="..."
set -euo pipefail

SIZE_MIB=${1:-1024}
CONVERT_RUNS=${CONVERT_RUNS:-3}
IMAGE_MIB=${IMAGE_MIB:-1024}
READS=${READS:-200000}
ALLOC_WRITES=${ALLOC_WRITES:-16000}
WORK=${2:-$(mktemp -d -p "${TMPDIR:-/var/tmp}" qcow2bench.XXXXXX)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --quiet --release -p virtkit-img --manifest-path "$ROOT/Cargo.toml"
OURS=$CARGO_TARGET_DIR/release/virtkit-img
command -v qemu-img >/dev/null || { echo "qemu-img not found (apt-get install qemu-utils)" >&2; exit 1; }
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
# best of N runs of a command (seconds)
best_time() {
  local n=$1; shift
  local best=
  for _ in $(seq "$n"); do
    local t0 t1 d
    t0=$(now); "$@" >/dev/null; t1=$(now)
    d=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$d < $best" | bc -l)" = 1 ]; then best=$d; fi
  done
  echo "$best"
}
iops() { sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p'; }

echo "== input: ${SIZE_MIB} MiB raw, alternating 1 MiB of random data and 1 MiB of zeroes (every 4th zero MiB a hole)"
SRC=$WORK/src.raw
truncate -s "${SIZE_MIB}M" "$SRC"
python3 - "$SRC" "$SIZE_MIB" <<'PY'
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY)
rnd = os.urandom(1 << 20)
zero = bytes(1 << 20)
for i in range(n):
    if i % 2 == 0:
        os.pwrite(fd, rnd[i % 7:] + rnd[:i % 7], i << 20)
    elif i % 8 != 1:
        os.pwrite(fd, zero, i << 20)
os.fsync(fd)
os.close(fd)
PY

echo "== convert raw -> qcow2 (best of $CONVERT_RUNS; both end with data on disk)"
Q=$WORK/q.qcow2; O=$WORK/o.qcow2
tq=$(best_time "$CONVERT_RUNS" bash -c "rm -f $Q; qemu-img convert -t none -f raw -O qcow2 $SRC $Q")
to=$(best_time "$CONVERT_RUNS" bash -c "rm -f $O; $OURS convert -f raw -O qcow2 $SRC $O")
qemu-img compare -q -f qcow2 -F qcow2 "$Q" "$O"
qemu-img check -q "$O"
printf "  qemu-img convert -t none -O qcow2: %8.3f s\n  virtkit-img convert -O qcow2:       %8.3f s\n  ratio (ours/qemu time, target <= 1.0): %.2f\n" "$tq" "$to" "$(echo "$to / $tq" | bc -l)"

echo "== 4 KiB reads, ${IMAGE_MIB} MiB fully allocated image, L2 fully cached, O_DIRECT (-t none), 32 in flight, $READS requests"
FULL=$WORK/full.qcow2
qemu-img create -q -f qcow2 "$FULL" "${IMAGE_MIB}M"
qemu-io -f qcow2 -c "write -P 0x5a 0 ${IMAGE_MIB}M" "$FULL" >/dev/null
N=$READS
q1=$(qemu-img bench -f qcow2 -t none -d 32 -c $N -s 4k "$FULL" | iops)
o1=$($OURS bench -f qcow2 -t none -d 32 -c $N -s 4k "$FULL" | iops)
o1r=$($OURS bench -f qcow2 -t none -d 32 -c $N -s 4k --random "$FULL" | iops)
printf "  qemu-img bench (sequential offsets): %8.0f IOPS\n  virtkit-img bench (same pattern):     %8.0f IOPS\n  virtkit-img bench (random offsets):   %8.0f IOPS\n  ratio (ours/qemu IOPS, target >= 1.0): %.2f\n" \
  "$(echo "$N / $q1" | bc -l)" "$(echo "$N / $o1" | bc -l)" "$(echo "$N / $o1r" | bc -l)" "$(echo "$q1 / $o1" | bc -l)"

echo "== first-allocation writes: 4 KiB into a fresh 64 KiB cluster each (-S 64k), O_DIRECT, 32 in flight, $ALLOC_WRITES requests"
N=$ALLOC_WRITES
A=$WORK/a.qcow2; B=$WORK/b.qcow2
qemu-img create -q -f qcow2 "$A" 1G
$OURS create -f qcow2 "$B" 1G
q2=$(qemu-img bench -w -f qcow2 -t none -d 32 -c $N -s 4k -S 64k "$A" | iops)
o2=$($OURS bench -w -f qcow2 -t none -d 32 -c $N -s 4k -S 64k --flush "$B" | iops)
qemu-img check -q "$B"
printf "  qemu-img bench -w:    %8.0f IOPS\n  virtkit-img bench -w: %8.0f IOPS\n  ratio (ours/qemu IOPS, target >= 0.8): %.2f\n" \
  "$(echo "$N / $q2" | bc -l)" "$(echo "$N / $o2" | bc -l)" "$(echo "$q2 / $o2" | bc -l)"

# Machine-readable figures: ours first, the peer's (qemu-img) second; IOPS = requests / seconds.
result() { # name value unit peer_value target label
  printf 'RESULT name=%s value=%.3f unit=%s peer=qemu-img peer_value=%.3f target_ratio=%s label="%s"\n' "$@"
}
result convert-raw-to-qcow2 "$to" s "$tq" "<=1.0" "convert raw to qcow2, ${SIZE_MIB} MiB input, O_DIRECT output, best of $CONVERT_RUNS (time)"
result read-4k-l2-cached "$(echo "$READS / $o1" | bc -l)" IOPS "$(echo "$READS / $q1" | bc -l)" ">=1.0" "4 KiB reads, ${IMAGE_MIB} MiB allocated image, O_DIRECT, 32 in flight, $READS requests"
result first-alloc-write-4k "$(echo "$N / $o2" | bc -l)" IOPS "$(echo "$N / $q2" | bc -l)" ">=0.8" "first-allocation 4 KiB writes into 64 KiB clusters, O_DIRECT, 32 in flight, $N requests"
