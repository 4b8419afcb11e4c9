#!/usr/bin/env python3
"""Where the CPU goes during a load: runs a command (usually wrk) and prints the CPU time each group
of processes used meanwhile, from /proc/<pid>/stat, as a share of the wall time (100% = one core).
Usage: bench/cpu.py wrk -t2 -c64 -d10s http://127.0.0.1:24011/users/1"""
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def snapshot():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[int(pid)] = (group(comm, cmd), int(fields[11]) + int(fields[12]))
    return out


def group(comm, cmd):
    """postgres backends name themselves in their title: keep the role of each."""
    if comm == "postgres" and ":" in cmd:  # "postgres: <cluster>: <user|walsender|walwriter|...> ..."
        parts = [p.strip() for p in cmd.split(":")]
        what = parts[2].split(" ")[0] if len(parts) > 2 and parts[2] else "postmaster"
        return f"postgres {parts[1].split(' ')[0]} {what}"
    return comm


def main():
    before = snapshot()
    t0 = time.monotonic()
    subprocess.run(sys.argv[1:], check=False)
    wall = time.monotonic() - t0
    after = snapshot()
    use = {}
    for pid, (name, ticks) in after.items():
        used = ticks - before.get(pid, (name, 0))[1]
        if used > 0:
            use[name] = use.get(name, 0) + used / TICK
    total = sum(use.values())
    print(f"wall {wall:.1f} s, CPU {total:.1f} s ({100 * total / wall:.0f}% of one core)")
    for name, sec in sorted(use.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:32} {sec:6.2f} s  {100 * sec / wall:5.1f}%")


if __name__ == "__main__":
    main()
