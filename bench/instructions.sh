#!/usr/bin/env bash
# User-space instructions the broker executes per message, from valgrind's callgrind: a count
# that does not move with machine noise (no hardware counters on these VMs), for comparing two
# builds or MQTT 5.0 against 3.1.1 where CPU-time figures differ by less than their noise.
#
# One shard runs under callgrind (about 50x slower, so it, not the load, is the bottleneck and
# batches are full for every build alike); ringmq-loadgen drives it at full rate for 6 s. The
# counters are zeroed 1.5 s in and dumped 4 s later, so start-up and shutdown are left out; the
# PUBLISHes of that window are callgrind's own count of calls to `Shard::accept_publish` (or
# `Shard::on_publish` in builds before it), exact whatever else the machine runs. Prints one line per binary and protocol (instructions per
# PUBLISH received: one delivery each in pairs and fan-in), and writes the callgrind profile
# (callgrind_annotate --inclusive=yes FILE shows where the instructions go) to OUT (default
# /tmp/ringmq-instructions).
#
# Usage: bench/instructions.sh [--binary B]... [--mqtt 3|5]... [--out DIR] [-- LOADGEN CASE]
#   default case: fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100
#   e.g. bench/instructions.sh --mqtt 3 --mqtt 5
#        bench/instructions.sh --binary /tmp/old/target/release/ringmq --binary target/release/ringmq
# Environment: LOADGEN (default target/release/ringmq-loadgen), PORT_BASE,
#   LOAD_CPUS (default 0). PORT_BASE default: random, so two runs at once do not collide.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
binaries=(); versions=(); out=/tmp/ringmq-instructions
case_args=(fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100)
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binaries+=("$2"); shift ;;
        --mqtt) versions+=("$2"); shift ;;
        --out) out="$2"; shift ;;
        --) shift; case_args=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) log "unknown argument $1 (see --help)"; exit 2 ;;
    esac
    shift
done
[ ${#binaries[@]} -gt 0 ] || binaries=("$root/target/release/ringmq")
[ ${#versions[@]} -gt 0 ] || versions=(3)
loadgen="${LOADGEN:-$root/target/release/ringmq-loadgen}"
port="${PORT_BASE:-$((20000 + RANDOM % 20000))}"
need valgrind "valgrind (apt-get install valgrind)"
need callgrind_control "valgrind's callgrind_control"
need python3
for bin in "${binaries[@]}" "$loadgen"; do [ -x "$bin" ] || { log "$bin is missing"; exit 1; }; done
make_work instructions
mkdir -p "$out"

echo "binary | mqtt | PUBLISHes received in window | instructions in window | instructions per PUBLISH"
n=0
for bin in "${binaries[@]}"; do
    for mqtt in "${versions[@]}"; do
        n=$((n + 1)); port=$((port + 1))
        profile="$out/callgrind.$n.mqtt$mqtt.out"
        rm -f "$profile"*
        printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n' \
            "$port" > "$work/ringmq.toml"
        start_broker "$BROKER_CPUS" "$work/broker.log" valgrind --tool=callgrind \
            --compress-strings=no --compress-pos=no --callgrind-out-file="$profile" \
            "$bin" --config "$work/ringmq.toml"
        # Valgrind takes its time to start a 15 MB binary on a busy machine: up to 60 s.
        for _ in $(seq 600); do
            grep -q "listening on" "$work/broker.log" 2>/dev/null && break
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.1
        done
        wait_listening "$work/broker.log"
        rm -rf "$work/out"
        taskset -c "$LOAD_CPUS" "$loadgen" "${case_args[@]}" --mqtt "$mqtt" --port "$port" \
            --warmup 0.5 --duration 6 --drain 0.5 --out "$work/out" -q > /dev/null 2>&1 &
        load_pid=$!
        sleep 1.5; timeout 10 callgrind_control -z "$broker_pid" > /dev/null 2>&1 || log "callgrind did not zero its counters"
        sleep 4; timeout 10 callgrind_control -d "$broker_pid" > /dev/null 2>&1 || log "callgrind did not dump (no traffic?)"
        wait "$load_pid"
        # A broker under valgrind may not see SIGTERM while blocked in io_uring_enter.
        stop_broker KILL
        python3 - "$bin" "$mqtt" "$profile".1 <<'PY'
import sys
binary, mqtt, profile = sys.argv[1:]
# Every PUBLISH passes `accept_publish` once (since 9efa68f); builds before it, `on_publish`.
total, callee, calls = 0, "", {"accept_publish": 0, "on_publish": 0}
for line in open(profile):
    if line.startswith(("summary:", "totals:")):
        total = max(total, int(line.split()[1]))
    elif line.startswith("cfn="):
        callee = line.strip()
    elif line.startswith("calls="):
        for name in calls:
            if callee.endswith("Shard>::" + name):
                calls[name] += int(line.split()[0][len("calls="):])
publishes = calls["accept_publish"] or calls["on_publish"]
print(f"{binary} | {mqtt} | {publishes} | {total} | {total / max(publishes, 1):.0f}")
PY
    done
done
log "profiles in $out"
