#!/usr/bin/env python3
"""Who used the CPU during a load run, from two snapshots of /proc (Linux).

    cpu-share.py snap FILE                       write a snapshot
    cpu-share.py report BEFORE AFTER NAME=PID[,PID...] ... [NAME=comm:COMM]

report prints `NAME N%` for each group and `rest N%`, in percent of one core over the time
between the snapshots: a group is its pids and all their descendants (nginx's workers, say), or
every process whose command name is COMM (`wrk=comm:wrk`); `rest` is the machine's busy time
that no group accounts for (other processes, the kernel's own threads, interrupts)."""

import json
import os
import sys


def snap():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
        procs[pid] = [int(rest[1]), comm, int(rest[11]) + int(rest[12])]
    return {"total": sum(fields), "busy": sum(fields) - idle, "procs": procs}


def report(before, after, groups):
    ncpu = os.cpu_count() or 1
    elapsed = (after["total"] - before["total"]) / ncpu  # jiffies of one core
    if elapsed <= 0:
        print("no time passed")
        return
    procs = dict(before["procs"])
    procs.update(after["procs"])
    children = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(str(ppid), []).append(pid)

    def used(pid):
        b = before["procs"].get(pid)
        a = after["procs"].get(pid)
        if a is None:
            return 0
        return a[2] - (b[2] if b is not None and b[1] == a[1] else 0)

    counted = set()
    out = []
    for name, spec in groups:
        if spec.startswith("comm:"):
            members = {p for p, (_, comm, _) in procs.items() if comm == spec[5:]}
        else:
            members, todo = set(), [p for p in spec.split(",") if p]
            while todo:
                p = todo.pop()
                if p not in members:
                    members.add(p)
                    todo.extend(children.get(p, []))
        members -= counted
        counted |= members
        if members and not any(p in after["procs"] for p in members):
            out.append((name, None))  # gone before the second snapshot: unknown
        else:
            out.append((name, sum(used(p) for p in members)))
    busy = after["busy"] - before["busy"]
    out.append(("rest", max(0, busy - sum(j or 0 for _, j in out))))
    print(" ".join(f"{name} " + ("?" if j is None else f"{100 * j / elapsed:.0f}%") for name, j in out))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "snap":
        with open(sys.argv[2], "w") as f:
            json.dump(snap(), f)
    elif len(sys.argv) >= 4 and sys.argv[1] == "report":
        with open(sys.argv[2]) as f:
            before = json.load(f)
        with open(sys.argv[3]) as f:
            after = json.load(f)
        report(before, after, [g.split("=", 1) for g in sys.argv[4:]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
