#!/usr/bin/env python3
"""Where two guest boots spend their kernel time: per-initcall durations from two kernel logs
taken with `initcall_debug` (for example `cargo xtask boot-bench --runs 1 --append
"initcall_debug virtkit.dmesg log_buf_len=4M" --console DIR`, then
`initcall-diff.py DIR/vm-runner-1.log DIR/qemu-1.log`).

Prints the log time of a few boot milestones in each, the total initcall time, and the
initcalls whose durations differ most."""
import re
import sys

CALL = re.compile(r"\[\s*([0-9.]+)\] initcall (\S+?)(?:\+0x\S+)? returned \S+ after (\d+) usecs")
MILESTONES = [
    ("tsc", re.compile(r"tsc: (Detected|Refined|Fast TSC|Marking)")),
    ("smp-booted", re.compile(r"smp: Brought up")),
    ("clocksource-tsc", re.compile(r"clocksource: Switched to clocksource")),
    ("free-init", re.compile(r"Freeing unused kernel")),
    ("run-init", re.compile(r"Run /init")),
]
STAMP = re.compile(r"^\[\s*([0-9.]+)\]")


def read(path):
    calls, miles, lines = {}, {}, []
    for line in open(path, errors="replace"):
        m = CALL.search(line)
        if m:
            calls[m.group(2)] = calls.get(m.group(2), 0) + int(m.group(3))
        for name, rx in MILESTONES:
            s = STAMP.search(line)
            if s and name not in miles and rx.search(line):
                miles[name] = (float(s.group(1)), line.strip()[:110])
    return calls, miles


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: initcall-diff.py OURS.log PEER.log")
    (a, am), (b, bm) = read(sys.argv[1]), read(sys.argv[2])
    if not a or not b:
        sys.exit("no `initcall ... returned` lines: boot with initcall_debug and print dmesg")
    print(f"{'milestone':<16} {'ours s':>9} {'peer s':>9}")
    for name, _ in MILESTONES:
        x = am.get(name, (float("nan"), ""))
        y = bm.get(name, (float("nan"), ""))
        print(f"{name:<16} {x[0]:9.3f} {y[0]:9.3f}   {x[1][:60]}")
    print(f"total initcall time: ours {sum(a.values())/1000:.1f} ms, peer {sum(b.values())/1000:.1f} ms")
    diffs = sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))
    print(f"{'initcall':<44} {'ours ms':>9} {'peer ms':>9}")
    for k in diffs[:25]:
        print(f"{k:<44} {a.get(k, 0)/1000:9.2f} {b.get(k, 0)/1000:9.2f}")


if __name__ == "__main__":
    main()
