#!/usr/bin/env python3
"""Memory per live viewer of a freshly started server: plain HTTP, or HTTPS with --ca.

    load-tests/https-viewers.py --pid PID --address 127.0.0.1:8443 [--ca cert.pem] \
        [--name localhost] [--code hot] [--viewers 15000]

It opens --viewers streams of GET /realtime/{code} (over TLS with SNI --name, trusting --ca
only, when --ca is given), waits for the first frame of each, and prints the growth of the
server's resident memory (VmRSS) divided by the viewers. Every stream must show its first
frame, or the run fails. Run it once on a fresh server per kind (load-tests/https-viewers.sh
does): memory freed by one kind's viewers would be reused by the next and hide its cost.
Needs Python 3.9+ and nothing outside its standard library.
"""
import argparse
import asyncio
import ssl
import sys
import time


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def open_viewer(host, port, code, tls, name):
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, server_hostname=name if tls else None
    )
    writer.write(f"GET /realtime/{code} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    await writer.drain()
    seen = b""
    while b"data:" not in seen:
        chunk = await asyncio.wait_for(reader.read(4096), 30)
        if not chunk:
            raise RuntimeError("a stream closed before its first frame")
        seen += chunk
    return writer


async def measure(args, address, tls):
    host, port = address.rsplit(":", 1)
    before = rss(args.pid)
    started = time.monotonic()
    writers = []
    # A few hundred at a time, so the server's accept backlog is never the limit.
    for i in range(0, args.viewers, 200):
        batch = [
            open_viewer(host, int(port), args.code, tls, args.name)
            for _ in range(min(200, args.viewers - i))
        ]
        writers += await asyncio.gather(*batch)
    await asyncio.sleep(1)
    after = rss(args.pid)
    took = time.monotonic() - started
    for w in writers:
        w.close()
    await asyncio.sleep(2)
    return (after - before) / len(writers), len(writers), took


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--ca")
    p.add_argument("--name", default="localhost")
    p.add_argument("--code", default="hot")
    p.add_argument("--viewers", type=int, default=15000)
    args = p.parse_args()
    tls = None
    if args.ca:
        tls = ssl.create_default_context(cafile=args.ca)
        tls.set_alpn_protocols(["http/1.1"])
    each, n, took = await measure(args, args.address, tls)
    kind = "https" if tls else "plain"
    print(f"{kind}: {n} viewers, {each:,.0f} bytes each (opened in {took:.1f} s)")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
