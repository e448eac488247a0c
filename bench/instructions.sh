#!/usr/bin/env bash
# User-space instructions the broker executes per message, from valgrind's callgrind: a count
# that does not move with machine noise (no hardware counters on these VMs), for comparing two
# builds or MQTT 5.0 against 3.1.1 where CPU-time figures differ by less than their noise.
#
# One shard runs under callgrind (about 50x slower, so it, not the load, is the bottleneck and
# batches are full for every build alike); ringmq-loadgen drives it at full rate for 6 s. The
# counters are zeroed 1.5 s in and dumped 4 s later, so start-up and shutdown are left out; the
# messages of that window are the load's received count x 4/6 (the broker runs at a steady
# rate). Prints one line per binary and protocol, and writes the callgrind profile
# (callgrind_annotate --inclusive=yes FILE shows where the instructions go) to OUT (default
# /tmp/ringmq-instructions).
#
# Usage: bench/instructions.sh [--binary B]... [--mqtt 3|5]... [--out DIR] [-- LOADGEN CASE]
#   default case: fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100
#   e.g. bench/instructions.sh --mqtt 3 --mqtt 5
#        bench/instructions.sh --binary /tmp/old/target/release/ringmq --binary target/release/ringmq
# Environment: LOADGEN (default target/release/ringmq-loadgen), PORT_BASE (default 29700),
#   LOAD_CPUS (default 0).
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
port="${PORT_BASE:-29700}"
need valgrind "valgrind (apt-get install valgrind)"
need callgrind_control "valgrind's callgrind_control"
need python3
for bin in "${binaries[@]}" "$loadgen"; do [ -x "$bin" ] || { log "$bin is missing"; exit 1; }; done
make_work instructions
mkdir -p "$out"

echo "binary | mqtt | received | instructions in window | instructions per message"
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
        wait_listening "$work/broker.log"
        rm -rf "$work/out"
        taskset -c "$LOAD_CPUS" "$loadgen" "${case_args[@]}" --mqtt "$mqtt" --port "$port" \
            --warmup 0.5 --duration 6 --drain 0.5 --out "$work/out" -q > /dev/null 2>&1 &
        load_pid=$!
        sleep 1.5; callgrind_control -z "$broker_pid" > /dev/null 2>&1
        sleep 4; callgrind_control -d "$broker_pid" > /dev/null 2>&1
        wait "$load_pid"
        # A broker under valgrind may not see SIGTERM while blocked in io_uring_enter.
        stop_broker KILL
        python3 - "$bin" "$mqtt" "$work/out/summary.json" "$profile".1 <<'PY'
import json, sys
binary, mqtt, summary, profile = sys.argv[1:]
received = json.load(open(summary))["received"]
total = next(int(line.split()[1]) for line in open(profile)
             if line.startswith(("summary:", "totals:")))
print(f"{binary} | {mqtt} | {received} | {total} | {total / (received * 4 / 6):.0f}")
PY
    done
done
log "profiles in $out"
