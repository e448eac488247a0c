#!/usr/bin/env bash
# Partial packets (issue 7 item 5): broker memory held per connection that sends only the start
# of a packet and then goes quiet. Goal: <= 8 KiB of broker RSS per such socket.
#
# Starts a FRESH ringmq (1 shard, pinned to BROKER_CPUS), warms it up (600 short connections,
# so the provided-buffer pool is already resident), samples VmRSS, opens N connections from a
# Python client that each send:
#   --mode publish  a valid CONNECT, then (after its CONNACK) the 4-byte fixed header of a
#                   PUBLISH announcing ANNOUNCE bytes (default 1,000,000) and nothing more;
#   --mode connect  only the fixed header of a CONNECT announcing ANNOUNCE bytes (default
#                   1,000,000; a broker that caps CONNECT closes these at once; try
#                   --announce 8000 for a CONNECT within the cap).
# It waits for the broker to settle, samples VmRSS again, counts the connections still open,
# and prints the RSS growth divided by N and by the connections still open.
#
# Usage: bench/partial.sh [--mode publish|connect] [--connections N] [--announce BYTES]
#                         [--binary PATH] [--port P] [--no-build]
#   --binary PATH   the broker to measure (default: target/release/ringmq, built unless
#                   --no-build). To measure another commit: git worktree add /tmp/old <commit>;
#                   (cd /tmp/old && cargo build --release); bench/partial.sh --binary
#                   /tmp/old/target/release/ringmq
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$root"

mode=publish
connections=5000
announce=1000000
binary=""
port=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) mode="$2"; shift ;;
        --connections) connections="$2"; shift ;;
        --announce) announce="$2"; shift ;;
        --binary) binary="$2"; build=0; shift ;;
        --port) port="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "partial.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$mode" in publish|connect) ;; *) echo "partial.sh: --mode publish|connect" >&2; exit 2 ;; esac
for value in "$connections" "$announce"; do
    case "$value" in ''|*[!0-9]*|0) echo "partial.sh: counts are positive whole numbers" >&2; exit 2 ;; esac
done
[ -n "$port" ] || port=$((9600 + RANDOM % 300))
need python3
need taskset "taskset (util-linux)"
broker_binary
make_work partial

# Keys every version since the limits existed understands: the old build is measured too.
cat > "$work/broker.toml" <<EOF
listen = "127.0.0.1:$port"
shards = 1
ring_files_max = $((connections + 1000))
[limits]
connect_timeout_secs = 120
EOF
start_broker "$BROKER_CPUS" "$work/broker.log" "$binary" --config "$work/broker.toml"
wait_listening "$work/broker.log"

taskset -c "$LOAD_CPUS" python3 - "$port" "$mode" "$connections" "$announce" "$broker_pid" <<'PY'
import os, select, socket, sys, time

port, mode, n, announce, pid = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
addr = ("127.0.0.1", port)

def rss_kb():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def var_int(x):
    out = bytearray()
    while True:
        b = x % 128
        x //= 128
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)

def connect_packet(cid):
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + var_int(len(body)) + body

def read_connack(s):
    got = b""
    while len(got) < 4:
        d = s.recv(4 - len(got))
        if not d:
            raise RuntimeError("closed before CONNACK")
        got += d
    assert got == b"\x20\x02\x00\x00", got

# Warm-up: touch the broker's receive buffers and pools before the baseline.
for i in range(600):
    s = socket.create_connection(addr)
    s.sendall(connect_packet(b"warm-%d" % i))
    read_connack(s)
    s.sendall(b"\xe0\x00")
    s.close()
time.sleep(1.0)
before = rss_kb()

header = (b"\x30" if mode == "publish" else b"\x10") + var_int(announce)
socks = []
started = time.time()
for i in range(n):
    s = socket.create_connection(addr)
    if mode == "publish":
        s.sendall(connect_packet(b"partial-%d" % i))
        read_connack(s)
    s.sendall(header)
    socks.append(s)
opened = time.time() - started
time.sleep(2.0)
after = rss_kb()

still_open = 0
for s in socks:
    s.setblocking(False)
    try:
        d = s.recv(16)
        if d:
            still_open += 1  # the broker said something; count it as open
    except BlockingIOError:
        still_open += 1
    except OSError:
        pass
growth = (after - before) * 1024
print(f"mode {mode}: {n} connections, each sent {header.hex()} (a {'PUBLISH' if mode == 'publish' else 'CONNECT'} announcing {announce} bytes)"
      + (" after its CONNECT" if mode == "publish" else "") + f"; opened in {opened:.1f} s")
print(f"broker VmRSS {before} kB -> {after} kB: +{growth / 1024:.0f} kB, {growth / n:.0f} B per connection")
print(f"connections still open: {still_open} of {n}" + (f" ({growth / still_open:.0f} B per open connection)" if still_open else ""))
for s in socks:
    s.close()
PY
