#!/usr/bin/env bash
# Connection storms (issue 7 item 3): N connections opened at once against a FRESH ringmq; each
# must be answered (a CONNACK, or a close) before the deadline, none left hanging in the listen
# backlog; then every one is reset (SO_LINGER 0) and a new client must get its CONNACK at once.
#
# The Python client opens them from 16 threads at once, each sending as soon as it is
# connected, then counts per connection: CONNACK, closed, or silent (nothing by the deadline).
#   --mode connect  every connection sends a valid CONNECT
#   --mode mixed    half send random bytes, half a CONNECT then random bytes
# Prints attempted / CONNACKed / closed / silent, the broker's accepted count is in its log.
#
# Usage: bench/storm.sh [--mode connect|mixed] [--connections N] [--shards S] [--nofile N]
#                       [--ring-files N] [--deadline SECS] [--binary PATH] [--no-build]
#   --nofile N      the broker's open-file limit (ulimit -n), which sizes its fixed-file tables
#                   (N - 64 slots per ring): 1024 reproduces a shell's default (2 x 960 slots
#                   on 2 shards, under a 4,000 storm). Default: this shell's limit.
#   --ring-files N  ring_files_max instead (0 = from the open-file limit, the default)
#   --binary PATH   the broker to measure (default target/release/ringmq, built unless
#                   --no-build); for an older commit see bench/partial.sh --help.
# tests/hostile.rs runs the same checks in-process on every `cargo test` (15,000 connections
# on 1 and 2 shards, and a storm over capacity); this script measures a release broker.
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$root"

mode=connect
connections=4000
shards=2
nofile=""
ring_files=0
deadline=20
binary=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) mode="$2"; shift ;;
        --connections) connections="$2"; shift ;;
        --shards) shards="$2"; shift ;;
        --nofile) nofile="$2"; shift ;;
        --ring-files) ring_files="$2"; shift ;;
        --deadline) deadline="$2"; shift ;;
        --binary) binary="$2"; build=0; shift ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "storm.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$mode" in connect|mixed) ;; *) echo "storm.sh: --mode connect|mixed" >&2; exit 2 ;; esac
port=$((9900 + RANDOM % 90))
need python3
need taskset "taskset (util-linux)"
broker_binary
make_work storm

cat > "$work/broker.toml" <<EOF
listen = "127.0.0.1:$port"
shards = $shards
ring_files_max = $ring_files
EOF
limit="${nofile:-$(ulimit -n)}"
start_broker "$BROKER_CPUS" "$work/broker.log" \
    bash -c "ulimit -n $limit && exec $binary --config $work/broker.toml"
wait_listening "$work/broker.log"
grep "capacity" "$work/broker.log" >&2 || true

status=0
taskset -c "$LOAD_CPUS" python3 - "$port" "$mode" "$connections" "$deadline" <<'PY' || status=$?
import os, socket, struct, sys, threading, time

port, mode, total, deadline = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
addr = ("127.0.0.1", port)
THREADS = 16

def connect_packet(cid):
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body

def payload(n):
    if mode == "connect":
        return connect_packet(b"storm-%d" % n)
    if n % 2 == 0:
        return os.urandom(64 + n % 64)
    return connect_packet(b"storm-%d" % n) + os.urandom(64 + n % 64)

counts = {"connack": 0, "closed": 0, "silent": 0, "refused": 0}
lock = threading.Lock()
barrier = threading.Barrier(THREADS)
opened = []
started = time.time()
end = started + deadline

def answer(s):
    got = b""
    while True:
        if len(got) >= 4 and got[0] == 0x20:
            return "connack"
        left = end - time.time()
        if left <= 0:
            return "silent"
        s.settimeout(left)
        try:
            d = s.recv(256)
        except socket.timeout:
            return "silent"
        except OSError:
            return "closed"
        if not d:
            return "closed"
        got += d

def worker(t):
    mine = []
    barrier.wait()
    for n in range(t, total, THREADS):
        s = socket.socket()
        s.settimeout(max(end - time.time(), 0.1))
        try:
            s.connect(addr)
        except OSError:
            with lock:
                counts["refused"] += 1
            s.close()
            continue
        try:
            s.sendall(payload(n))
        except OSError:
            pass
        mine.append(s)
    for s in mine:
        result = answer(s)
        with lock:
            counts[result] += 1
    with lock:
        opened.extend(mine)

threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.time() - started
c = counts
print(f"{mode} storm: {total} attempted from {THREADS} threads, {c['connack']} CONNACKed, "
      f"{c['closed']} closed, {c['silent']} silent at the {deadline:.0f} s deadline, "
      f"{c['refused']} not connected; answered {c['connack'] + c['closed']} / {total} in {elapsed:.1f} s")
for s in opened:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
t0 = time.time()
fresh = socket.create_connection(addr, timeout=10)
fresh.settimeout(10)
fresh.sendall(connect_packet(b"fresh-%d" % os.getpid()))
try:
    got = fresh.recv(4)
except OSError as e:
    got = repr(e).encode()
ok = got == b"\x20\x02\x00\x00"
print(f"fresh client after the reset: {'CONNACK' if ok else 'NO CONNACK ' + repr(got)} in {(time.time() - t0) * 1000:.1f} ms")
sys.exit(0 if ok and c["silent"] == 0 else 3)
PY
sleep 1.5  # one more tick, so the stats line below is current
stop_broker
grep -E "stopped|tables full|accept keeps" "$work/broker.log" | sed 's/^/broker: /' >&2 || true
exit "$status"
