#!/usr/bin/env python3
"""Sorts the samples of a `perf record --call-graph` of linkpulse into areas of the request
path: the writer's and fjall's threads by thread; a sample in the kernel on the runtime's
threads by what the kernel was doing (socket reads, writes, wake-ups); the rest by the frames on
its stack (the first of linkpulse's areas any frame names, else the library nearest the leaf).
Each area also says how much of it was in the kernel and in the allocator.

    python3 load-tests/perf-areas.py perf.data [top-symbols]
"""
import collections
import os
import subprocess
import sys

# (area, substrings of a frame's symbol), in order of precedence.
# linkpulse's own areas win wherever they are on the stack; the libraries below them are told
# apart by the frame nearest the leaf.
AREAS = [
    ("actor: collect, number, analytics, hand to writer", ["links::actor", "ractor::"]),
    ("click construction (ip, headers, time)", ["http::redirect::Redirect::click"]),
    ("Links::click (backlog, inbox push, actor wake)", ["links::Links::click", "directory::Directory::push_click"]),
    ("link lookup (live entry, cache, fjall)", ["links::Links::find"]),
    ("metrics", ["linkpulse::metrics::"]),
    ("redirect handler, rest (Location, headers)", ["linkpulse::http::redirect::", "linkpulse::http::Timed"]),
    ("hoops (HeaderLimit)", ["http::limit::HeaderLimit"]),
    ("front: accept loop, sort, Rewind", ["linkpulse::http::front::"]),
    ("writer handle (channel to the writer thread)", ["linkpulse::store::writer::"]),
]
# A sample in the kernel goes by what the kernel was doing.
KERNEL = [
    ("kernel: futex (thread wake-ups and sleeps)", ["futex"]),
    ("kernel: epoll", ["epoll"]),
    ("kernel: socket writes (incl. loopback delivery)", ["tcp_sendmsg", "sock_write_iter", "do_writev", "__sys_sendto"]),
    ("kernel: socket reads", ["tcp_recvmsg", "sock_read_iter", "__sys_recvfrom", "ksys_read"]),
    ("kernel: accept, connect, close", ["accept", "tcp_close", "__x64_sys_close"]),
    ("kernel: scheduling, timers", ["schedule", "nanosleep", "hrtimer"]),
]
LIBRARIES = [
    ("salvo (routing, request, response)", ["salvo_core::", "salvo::"]),
    ("hyper (parse, encode, dispatch, socket I/O)", ["hyper::"]),
    ("tokio (scheduler, timers, I/O driver)", ["tokio::", "mio::"]),
]


def library(frames):
    for f in frames:
        for name, keys in LIBRARIES:
            if any(k in f for k in keys):
                return name
    return "other / unknown stack"


# Inlined frames (slow: addr2line) unless PERF_AREAS_INLINE=0.
INLINE = [] if os.environ.get("PERF_AREAS_INLINE", "1") != "0" else ["--no-inline"]


def main():
    path = sys.argv[1]
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,ip,sym,dso"] + INLINE,
        capture_output=True, text=True, check=False,
    ).stdout
    areas = collections.Counter()
    kernel = collections.Counter()
    alloc = collections.Counter()
    leaves = collections.Counter()
    total = 0
    for block in out.split("\n\n"):
        lines = [l for l in block.split("\n") if l.strip()]
        if not lines:
            continue
        comm = lines[0].strip().split()[0] if lines[0].strip() else "?"
        frames = []
        for l in lines[1:]:
            parts = l.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
        total += 1
        if comm.startswith("linkpulse-writ"):
            area = "writer thread (group commit, fjall inserts)"
        elif comm.startswith("fjall"):
            area = "fjall background (flush, compaction)"
        elif frames and "kernel.kallsyms" in frames[0]:
            area = next((name for name, keys in KERNEL
                         if any(k in f for f in frames for k in keys)), "kernel: other (irq, faults)")
        elif not comm.startswith("tokio"):
            area = f"thread {comm}"
        else:
            area = next((name for name, keys in AREAS
                         if any(k in f for f in frames for k in keys)), None) or library(frames)
        areas[area] += 1
        leaf = frames[0] if frames else "?"
        if "kernel.kallsyms" in leaf:
            kernel[area] += 1
        if "_mi_" in leaf or "mi_" in leaf.split("(")[0][:4] or "mi_free" in leaf:
            alloc[area] += 1
        leaves[leaf.rsplit(" (", 1)[0]] += 1
    if not total:
        print("no samples")
        return
    print(f"{total} samples")
    print(f"{'area':58} {'share':>7} {'kernel':>7} {'alloc':>7}")
    for area, n in areas.most_common():
        print(f"{area:58} {100 * n / total:6.1f}% {100 * kernel[area] / total:6.1f}% "
              f"{100 * alloc[area] / total:6.1f}%")
    print(f"\nall kernel {100 * sum(kernel.values()) / total:.1f}%, "
          f"all allocator {100 * sum(alloc.values()) / total:.1f}%")
    print(f"\ntop {top_n} leaf symbols:")
    for sym, n in leaves.most_common(top_n):
        print(f"  {100 * n / total:5.1f}%  {sym[:110]}")


if __name__ == "__main__":
    main()
