#!/usr/bin/env python3
"""A client that floods the broker with requests and never reads the answers (issue 7 item 6).

Connects (MQTT 3.1.1, clean session, keepalive 0) over a socket with a small receive buffer,
then for SECS seconds writes PINGREQs (or QoS 1 PUBLISHes to a topic nobody subscribes to, each
owing a PUBACK) as fast as the socket takes them, without ever reading. Every second it samples
the broker's VmRSS from /proc/PID/status. Prints one JSON object: the samples, the bytes
written, how long the writes waited in all and the longest stretch without a byte taken (a
broker that stops reading makes that the whole run: TCP back-pressure).

Usage: flood.py --port P --pid PID [--host 127.0.0.1] [--secs 15] [--kind pingreq|publish]
"""

import argparse
import errno
import json
import select
import socket
import struct
import time


def remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def mqtt_string(s):
    return struct.pack(">H", len(s)) + s


def connect_packet(client_id):
    body = mqtt_string(b"MQTT") + bytes([4, 0x02]) + struct.pack(">H", 0) + mqtt_string(client_id)
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic, packet_id, payload):
    body = mqtt_string(topic) + struct.pack(">H", packet_id) + payload
    return bytes([0x32]) + remaining_length(len(body)) + body


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the broker's pid, for VmRSS")
    parser.add_argument("--secs", type=float, default=15.0)
    parser.add_argument("--kind", choices=["pingreq", "publish"], default="pingreq")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((args.host, args.port))
    sock.sendall(connect_packet(b"flood-%d" % time.monotonic_ns()))
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise SystemExit("flood.py: the broker closed the connection before CONNACK")
        connack += chunk
    if connack != b"\x20\x02\x00\x00":
        raise SystemExit(f"flood.py: CONNACK refused: {connack.hex()}")

    if args.kind == "pingreq":
        chunk = b"\xc0\x00" * 32768
    else:
        chunk = b"".join(publish_packet(b"flood/nobody", n, b"x") for n in range(1, 4097))
    sock.setblocking(False)

    rss_before = rss_kib(args.pid)
    samples = [{"t_s": 0.0, "rss_kib": rss_before, "written_bytes": 0}]
    start = time.monotonic()
    next_sample = start + 1.0
    written = 0
    offset = 0
    blocked_s = 0.0
    last_progress = start
    longest_blocked_s = 0.0
    closed = None
    while True:
        now = time.monotonic()
        if now >= next_sample:
            samples.append({
                "t_s": round(now - start, 3),
                "rss_kib": rss_kib(args.pid),
                "written_bytes": written,
            })
            next_sample += 1.0
        if now - start >= args.secs:
            break
        try:
            n = sock.send(chunk[offset:])
            written += n
            offset = (offset + n) % len(chunk)
            now = time.monotonic()
            longest_blocked_s = max(longest_blocked_s, now - last_progress)
            last_progress = now
        except BlockingIOError:
            # Wait until the socket takes bytes again (or the next sample is due).
            waited = time.monotonic()
            select.select([], [sock], [], max(0.0, min(next_sample, start + args.secs) - waited))
            blocked_s += time.monotonic() - waited
        except OSError as e:
            closed = errno.errorcode.get(e.errno, str(e.errno))
            break
    longest_blocked_s = max(longest_blocked_s, time.monotonic() - last_progress)
    rss_after = rss_kib(args.pid)
    print(json.dumps({
        "kind": args.kind,
        "secs": args.secs,
        "written_bytes": written,
        "blocked_s": round(blocked_s, 3),
        "longest_blocked_s": round(longest_blocked_s, 3),
        "closed_by_broker": closed,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_growth_kib": rss_after - rss_before,
        "rss_peak_kib": max(s["rss_kib"] for s in samples + [{"rss_kib": rss_after}]),
        "samples": samples,
    }))
    sock.close()


if __name__ == "__main__":
    main()
