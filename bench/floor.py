#!/usr/bin/env python3
"""The machine's own latency floor, with no broker and no ringmq code: an independent probe for
bench/latency.sh.

  timer  How late a thread wakes up after sleeping until an intended time, at RATE wake-ups per
         second (what an open-loop sender does between messages). Lateness = woke - intended.
  echo   Open-loop TCP echo over loopback: a client pinned to --client-cpus sends a 16-byte
         message stamped with its intended send time every 1/RATE s; an echo server pinned to
         --server-cpus writes every byte back (TCP_NODELAY both ways). Latency = time the echo is
         read - intended send time, so a late sender counts (no coordinated omission). This is
         one hop more than a broker's pairs case (client -> server -> client) without any MQTT.

--spin keeps every core of --client-cpus and --server-cpus busy with a nice-19 spinning process
for the run, so the vCPUs never go idle (halt): if the tails shrink with it, they came from
waking an idle vCPU (the hypervisor), not from the work.

Prints one JSON object: percentiles in microseconds (p50, p90, p99, p99.9, max) per probe, and
the count of samples. Python's own cost (~10 us a message) is in the figures: they are an upper
bound of the floor, not an exact one.

Usage: bench/floor.py [--rate 20000] [--seconds 5] [--client-cpus 0] [--server-cpus 1]
                      [--probes timer,echo] [--spin]
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import time


def percentiles(samples_ns):
    if not samples_ns:
        return {"count": 0}
    s = sorted(samples_ns)

    def at(q):
        return s[min(len(s) - 1, int(q * len(s)))] / 1000

    return {"count": len(s), "p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99),
            "p99_9_us": at(0.999), "max_us": s[-1] / 1000}


def pin(cpus):
    wanted = set()
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        wanted.update(range(int(lo), int(hi or lo) + 1))
    os.sched_setaffinity(0, wanted)


def timer_probe(rate, seconds):
    """Sleeps until each intended time; returns how late each wake-up was, in ns."""
    interval = 1_000_000_000 // rate
    start = time.monotonic_ns() + 10_000_000
    late = []
    n = rate * seconds
    for j in range(n):
        due = start + j * interval
        now = time.monotonic_ns()
        if due > now:
            time.sleep((due - now) / 1e9)
        late.append(time.monotonic_ns() - due)
    return late


def echo_server(listener, cpus):
    pin(cpus)
    # Bounded: a parent that died must not leave this child (and the bench lock it inherited)
    # waiting for ever.
    listener.settimeout(30)
    conn, _ = listener.accept()
    conn.settimeout(60)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def echo_probe(rate, seconds, client_cpus, server_cpus):
    """Open-loop stamped messages through a TCP echo; returns latency per message, in ns."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    pid = os.fork()
    if pid == 0:
        try:
            echo_server(listener, server_cpus)
        finally:
            os._exit(0)
    address = listener.getsockname()
    listener.close()
    pin(client_cpus)
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    interval = 1_000_000_000 // rate
    total = rate * seconds
    start = time.monotonic_ns() + 10_000_000
    sent = 0
    latencies = []
    pending = b""
    deadline = start + (seconds + 2) * 1_000_000_000
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while len(latencies) < total and time.monotonic_ns() < deadline:
        now = time.monotonic_ns()
        while sent < total and start + sent * interval <= now:
            sock.send(struct.pack("<QQ", start + sent * interval, sent))
            sent += 1
        wait_ms = 0
        if sent < total:
            wait_ms = max(0, (start + sent * interval - time.monotonic_ns()) / 1e6)
        else:
            wait_ms = 50
        if poller.poll(wait_ms):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                break
            got = time.monotonic_ns()
            pending += data
            whole = len(pending) // 16 * 16
            for off in range(0, whole, 16):
                stamp, _ = struct.unpack_from("<QQ", pending, off)
                latencies.append(got - stamp)
            pending = pending[whole:]
    sock.close()
    os.waitpid(pid, 0)
    return latencies


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=20000)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--client-cpus", default=os.environ.get("LOAD_CPUS", "0"))
    p.add_argument("--server-cpus", default=os.environ.get("BROKER_CPUS", "1"))
    p.add_argument("--probes", default="timer,echo")
    p.add_argument("--spin", action="store_true", help="a nice-19 spinner on each probed core")
    args = p.parse_args()
    if args.rate <= 0 or args.seconds <= 0:
        sys.exit("floor.py: --rate and --seconds must be positive")
    out = {"rate_per_sec": args.rate, "seconds": args.seconds, "spin": args.spin,
           "client_cpus": args.client_cpus, "server_cpus": args.server_cpus}
    spinners = []
    if args.spin:
        for cpus in sorted({args.client_cpus, args.server_cpus}):
            pid = os.fork()
            if pid == 0:
                pin(cpus)
                os.nice(19)
                while True:
                    pass
            spinners.append(pid)
    try:
        run_probes(args, out)
    finally:
        for pid in spinners:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    print(json.dumps(out))


def run_probes(args, out):
    allowed = os.sched_getaffinity(0)
    for probe in args.probes.split(","):
        os.sched_setaffinity(0, allowed)
        if probe == "timer":
            pin(args.client_cpus)
            out["timer_wake_late"] = percentiles(timer_probe(args.rate, args.seconds))
        elif probe == "echo":
            lat = echo_probe(args.rate, args.seconds, args.client_cpus, args.server_cpus)
            out["tcp_echo"] = percentiles(lat)
            out["tcp_echo"]["expected"] = args.rate * args.seconds
        else:
            sys.exit(f"floor.py: unknown probe {probe} (timer, echo)")


if __name__ == "__main__":
    main()
