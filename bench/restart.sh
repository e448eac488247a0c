#!/usr/bin/env bash
# Restart time with persistence (issue 10): SESSIONS persistent sessions (3.1.1, clean session
# 0, default 100,000), each subscribed at QoS 1 to one topic, then offline; MESSAGES QoS 1
# messages (default 10) published to that topic, so each session has MESSAGES queued. The
# broker is killed with SIGKILL, started again on the same directory, and timed from exec to
# the port accepting a connection; its "restored" line says how many sessions and queued
# messages came back. ROUNDS restarts (default 3), each after a SIGKILL of the previous life.
#
# Usage: bench/restart.sh [BINARY]
#   cargo build --release -p ringmq && bench/restart.sh
# Environment: SESSIONS, MESSAGES, ROUNDS, SHARDS (default 1), BROKER_CPU (default 1),
#   PORT (default 29700), WORK_DIR (default /tmp: say where the disk under test is).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ "${1:-}" = "--help" ] && { usage; exit 0; }
bin="${1:-$root/target/release/ringmq}"
sessions="${SESSIONS:-100000}"; messages="${MESSAGES:-10}"; rounds="${ROUNDS:-3}"
shards="${SHARDS:-1}"; broker_cpu="${BROKER_CPU:-1}"; port="${PORT:-29700}"
[ -x "$bin" ] || { log "$bin is missing"; exit 1; }
need python3
need taskset "taskset (util-linux)"
work="$(mktemp -d "${WORK_DIR:-/tmp}/ringmq-restart.XXXXXX")"
printf 'listen = "127.0.0.1:%s"\nshards = %s\n[limits]\nsessions_max = %s\noffline_queue_max = %s\n[persistence]\nmode = "on"\ndir = "%s"\n' \
    "$port" "$shards" "$((sessions + 1000))" "$((messages + 10))" "$work/data" > "$work/ringmq.toml"

start_broker "$broker_cpu" "$work/broker.log" "$bin" --config "$work/ringmq.toml"
wait_listening "$work/broker.log"
log "creating $sessions sessions with $messages queued messages each"
python3 - "$port" "$sessions" "$messages" <<'PY'
import selectors, socket, sys
port, sessions, messages = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
TOPIC = b"bench/restart"

def packet(first, body):
    out, n = bytearray([first]), len(body)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body

def s(b):
    return len(b).to_bytes(2, "big") + b

def connect(client_id):  # 3.1.1, clean session 0, keepalive 60
    return packet(0x10, s(b"MQTT") + bytes([4, 0, 0, 60]) + s(client_id))

subscribe = packet(0x82, (1).to_bytes(2, "big") + s(TOPIC) + bytes([1]))
# CONNACK (4 bytes) + SUBACK (5 bytes), then DISCONNECT.
sel, batch, made = selectors.DefaultSelector(), 500, 0
while made < sessions:
    open_ = {}
    for i in range(made, min(made + batch, sessions)):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(connect(b"restart-%d" % i) + subscribe)
        sock.setblocking(False)
        open_[sock] = b""
        sel.register(sock, selectors.EVENT_READ)
    while open_:
        for key, _ in sel.select(timeout=10) or [(None, None)]:
            if key is None:
                sys.exit("no SUBACK within 10 s")
            sock = key.fileobj
            data = sock.recv(64)
            if not data:
                sys.exit("connection closed before its SUBACK")
            open_[sock] += data
            if len(open_[sock]) >= 9:
                sock.sendall(b"\xe0\x00")
                sel.unregister(sock)
                sock.close()
                del open_[sock]
    made = min(made + batch, sessions)
pub = socket.create_connection(("127.0.0.1", port))
pub.sendall(packet(0x10, s(b"MQTT") + bytes([4, 2, 0, 60]) + s(b"restart-pub")))
assert pub.recv(4)[:2] == b"\x20\x02"
for n in range(messages):
    pub.sendall(packet(0x32, s(TOPIC) + (n + 1).to_bytes(2, "big") + b"queued message %d" % n))
    ack = b""
    while len(ack) < 4:
        ack += pub.recv(4 - len(ack))
    assert ack[0] == 0x40, ack
pub.close()
PY
sleep 1
log "log before the kill: $(du -sh "$work/data" | cut -f1)"
stop_broker KILL
echo "# $sessions sessions x $messages queued QoS 1 messages, $shards shard(s), data under $work ($(df -T "$work" | awk 'NR==2 {print $2}'))"
echo "round | restart s (exec to port accepting) | restored line | data dir after"
for round in $(seq 1 "$rounds"); do
    : > "$work/broker.log"
    t0=$(date +%s.%N)
    start_broker "$broker_cpu" "$work/broker.log" "$bin" --config "$work/ringmq.toml"
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
        sleep 0.01
    done
    t1=$(date +%s.%N)
    for _ in $(seq 100); do grep -q "restored" "$work/broker.log" && break; sleep 0.05; done
    restored="$(grep -o 'restored .*' "$work/broker.log" | head -1 || true)"
    echo "$round | $(python3 -c "print(f'{$t1 - $t0:.2f}')") | $restored | $(du -sh "$work/data" | cut -f1)"
    stop_broker KILL
done
