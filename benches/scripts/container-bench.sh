#!/bin/bash
# container-runner vs runc vs crun, side by side, on the same busybox bundle.
#
#   sudo benches/scripts/container-bench.sh [path/to/container-runner]
#
# Without a path it builds and measures the release build we recommend for installing
# the runtime: static and not position-independent (no ld.so, no libgcc_s, no start-up
# relocations: the runtime's start is on every `run`'s path), in target/runtime-static:
#   RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
#       CARGO_TARGET_DIR=target/runtime-static cargo build --release -p container-runner \
#       --target x86_64-unknown-linux-gnu
# Pass target/release/container-runner to measure the plain dynamic build.
#
# Env: N (runs per runtime, default 100), WARMUP (default 5).
#
# "container-runner ro" is the same binary through a read-only bind mount (as when
# installed on a read-only /usr), which needs neither the protective re-exec nor the
# exec DMZ.
#
# The last lines are for `cargo xtask bench` (machine-readable, one per figure):
#   RESULT name=run-median-vs-crun value=MS unit=ms peer=crun peer_value=MS target_ratio=<=0.7 label="..."
#
# Measures `run` of busybox `true` (create + start + wait + delete in one command):
# median / min / p90 / mean per run, the total of N sequential runs, the median CPU time
# (user + sys of the runtime and the processes it reaped), the runtime's peak RSS
# (GNU time's maximum resident set size of the runtime command), and whether a container under a 512 KiB
# memory limit starts and runs `true`. Runs are interleaved (ours, runc, crun, ours, ...)
# so drift hits all three alike. Everything runs in a private mount namespace where
# /sys/fs/cgroup/unified is unmounted: crun refuses this host's hybrid layout otherwise,
# and all three get the same view. The runtimes' state roots (--root) are on a tmpfs, as
# /run is on a usual host (here /run is on the ext4 root, where creating and deleting
# state files for thousands of runs slows every inode allocation down for minutes).
set -euo pipefail

N=${N:-100}
WARMUP=${WARMUP:-5}
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ $# -ge 1 ]; then
    RUNNER=$1
else
    RUNNER=$here/target/runtime-static/x86_64-unknown-linux-gnu/release/container-runner
    (cd "$here" && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
        CARGO_TARGET_DIR=target/runtime-static cargo build --release -q -p container-runner \
        --target x86_64-unknown-linux-gnu) || { echo "build of container-runner failed" >&2; exit 1; }
fi
RUNNER=$(realpath "$RUNNER")

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in runc crun python3 unshare /usr/bin/time; do
    command -v $t >/dev/null || { echo "missing $t (apt-get install runc crun python3 util-linux time)" >&2; exit 1; }
done
[ -x "$RUNNER" ] || { echo "no container-runner at $RUNNER" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d /tmp/container-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

mk_bundle() { # dir memory_limit_or_empty
    local b=$1
    mkdir -p "$b/rootfs"/{bin,proc,sys,dev,etc,tmp}
    cp /bin/busybox "$b/rootfs/bin/busybox"
    ln -s busybox "$b/rootfs/bin/sh"
    ln -s busybox "$b/rootfs/bin/true"
    (cd "$b" && runc spec)
    python3 - "$b/config.json" "${2:-}" <<'EOF'
import json, sys
p, mem = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["true"]
if mem:
    c["linux"].setdefault("resources", {})["memory"] = {"limit": int(mem)}
json.dump(c, open(p, "w"), indent=1)
EOF
}
mk_bundle "$work/bundle"
mk_bundle "$work/bundle512k" 524288

cat >"$work/bench.py" <<'EOF'
import os, statistics, subprocess, sys, time
runner, work, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# "container-runner ro": the same binary reached through a read-only bind mount, as when
# installed on a read-only /usr: it is already safe from CVE-2019-5736 and skips the
# protective re-exec that the plain install does on create/run/exec.
rts = {"container-runner": runner, "container-runner ro": f"{work}/cr-ro", "runc": "runc", "crun": "crun"}
times = {k: [] for k in rts}
cpu = {k: [] for k in rts}
rss = {k: 0 for k in rts}
errors = {k: 0 for k in rts}

def run_one(name, exe, bundle, cid):
    root = f"{work}/state/root-{name}"
    t0 = time.perf_counter()
    p = subprocess.Popen([exe, "--root", root, "run", "--bundle", bundle, cid],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    # CPU time of the runtime and every process it reaped (init, the container's `true`).
    run_one.cpu = ru.ru_utime + ru.ru_stime
    return dt, ru.ru_maxrss, p.returncode, err.decode(errors="replace").strip()

for i in range(warmup + n):
    for name, exe in rts.items():
        dt, maxrss, rc, err = run_one(name, exe, f"{work}/bundle", f"b{i}")
        if rc != 0:
            errors[name] += 1
            if errors[name] == 1:
                print(f"{name}: run failed (rc {rc}): {err}", file=sys.stderr)
            continue
        if i >= warmup:
            times[name].append(dt)
            cpu[name].append(run_one.cpu)

# The path podman and containerd take: `create`, `start`, then `delete --force` (the
# process is `true`: usually gone by then), three runtime processes per container.
def csd_one(exe, name, cid):
    root = f"{work}/state/root-{name}"
    bundle = f"{work}/bundle"
    t0 = time.perf_counter()
    rcs = []
    for args in (["create", "--bundle", bundle, cid], ["start", cid], ["delete", "--force", cid]):
        rcs.append(subprocess.run([exe, "--root", root] + args, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode)
    return time.perf_counter() - t0, max(rcs)

csd = {k: [] for k in rts}
for i in range(warmup + n):
    for name, exe in rts.items():
        dt, rc = csd_one(exe, name, f"c{i}")
        if rc != 0:
            errors[name] += 1
            continue
        if i >= warmup:
            csd[name].append(dt)

# Peak RSS: ru_maxrss from wait4 on a direct child would include the memory of the
# forked Python before exec, so measure through GNU time (a small C program) instead:
# the runtime's own peak, or that of the processes it waits for (runc's init), whichever
# is larger.
for name, exe in rts.items():
    peak = 0
    for i in range(5):
        out = f"{work}/rss-{name}"
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out, exe, "--root", f"{work}/state/root-{name}",
                        "run", "--bundle", f"{work}/bundle", f"r{i}"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            peak = max(peak, int(open(out).read().split()[-1]))
        except (OSError, ValueError, IndexError):
            pass
    rss[name] = peak

def ms(x): return f"{x * 1000:.1f}"
print(f"run of busybox `true`, {n} sequential runs each (interleaved), {warmup} warm-up runs")
print(f"{'runtime':20} {'median ms':>10} {'min ms':>7} {'p90 ms':>8} {'mean ms':>8} {'total s':>8} "
      f"{'CPU ms':>7} {'peak RSS KiB':>13} {'failed':>7}")
for name in rts:
    t = sorted(times[name])
    if not t:
        print(f"{name:20} {'-':>10}"); continue
    print(f"{name:20} {ms(statistics.median(t)):>10} {ms(t[0]):>7} {ms(t[int(len(t) * 0.9) - 1]):>8} "
          f"{ms(statistics.mean(t)):>8} {sum(t):>8.2f} {ms(statistics.median(cpu[name])):>7} "
          f"{rss[name]:>13} {errors[name]:>7}")
for name in rts:
    if csd[name]:
        print(f"{name:20} create+start+delete median {ms(statistics.median(csd[name]))} ms")
m = {k: statistics.median(v) for k, v in times.items() if v}
mc = {k: statistics.median(v) for k, v in csd.items() if v}
mn = {k: min(v) for k, v in times.items() if v}
c = {k: statistics.median(v) for k, v in cpu.items() if v}
for ours in ("container-runner", "container-runner ro"):
    for peer in ("crun", "runc"):
        if ours in m and peer in m:
            print(f"{ours} / {peer}: median {m[ours] / m[peer]:.2f}x, min {mn[ours] / mn[peer]:.2f}x, "
                  f"CPU {c[ours] / c[peer]:.2f}x")
print(f"load average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")

print("\n512 KiB memory limit, `true`:")
for name, exe in rts.items():
    dt, _, rc, err = run_one(name, exe, f"{work}/bundle512k", "m512")
    print(f"  {name:20} {'ok' if rc == 0 else 'FAILED rc=' + str(rc)} {ms(dt)} ms {err[:160] if rc else ''}")
    subprocess.run([exe, "--root", f"{work}/state/root-{name}", "delete", "--force", "m512"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

# Machine-readable figures (ours first, the peer's second).
def result(name, ours, peer, values, target, label):
    if ours in values and peer in values:
        tgt = f" target_ratio={target}" if target else ""
        print(f"RESULT name={name} value={values[ours] * 1000:.3f} unit=ms peer={peer} "
              f"peer_value={values[peer] * 1000:.3f}{tgt} label=\"{label}, {n} runs\"")
    else:
        print(f"RESULT-MISSING {name}: no successful runs of {ours} or {peer}")
result("run-median-vs-crun", "container-runner", "crun", m, "<=0.7", "run of busybox true, median wall time")
result("run-min-vs-crun", "container-runner", "crun", mn, "", "run of busybox true, min wall time")
result("run-cpu-vs-crun", "container-runner", "crun", c, "", "run of busybox true, median CPU time")
result("run-median-vs-runc", "container-runner", "runc", m, "", "run of busybox true, median wall time")
result("create-start-delete-median-vs-crun", "container-runner", "crun", mc, "<=0.7",
       "create + start + delete --force of busybox true, median wall time")
result("run-median-ro-vs-crun", "container-runner ro", "crun", m, "", "run of busybox true from a read-only mount, median wall time")
EOF

echo "host: $(uname -r), $(nproc) cpus; $("$RUNNER" --version | sed -n 1p); $(runc --version | sed -n 1p); $(crun --version | sed -n 1p)"
touch "$work/cr-ro"
unshare -m --propagation private bash -c '
    umount /sys/fs/cgroup/unified 2>/dev/null || true
    mount --bind "$1" "$0/cr-ro" && mount -o remount,bind,ro "$0/cr-ro"
    mkdir -p "$0/state" && mount -t tmpfs -o mode=0700 tmpfs "$0/state"
    exec python3 "$0/bench.py" "$1" "$0" "$2" "$3"
' "$work" "$RUNNER" "$N" "$WARMUP"
