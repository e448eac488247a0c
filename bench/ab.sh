#!/usr/bin/env bash
# Two ringmq binaries head to head: broker CPU nanoseconds per received message (from
# /proc/PID/stat, steadier than rates on a shared machine), one shard pinned to BROKER_CPU,
# ringmq-loadgen pinned to LOAD_CPU, interleaved A B A B over ROUNDS rounds.
#
# Prints every run, then the median per case and side, and new/old.
#
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
#   e.g. git archive 9f48957 | tar -x -C /tmp/old && (cd /tmp/old && cargo build --release)
#        cargo build --release -p ringmq -p ringmq-loadgen
#        bench/ab.sh /tmp/old/target/release/ringmq target/release/ringmq 3
#   MQTT 5.0 against 3.1.1 on one binary (issue 8: 5.0 at >= 0.9x of 3.1.1's rate is
#   new/old <= 1.11 in CPU per message):
#        MQTT_NEW=5 bench/ab.sh target/release/ringmq target/release/ringmq 5
#   Observability on against off on one binary (issue 11: $SYS every second and the metrics
#   endpoint, scraped every second, at >= 0.97x, i.e. new/old <= 1.03 in CPU per message):
#        ARGS_OLD="--sys-interval-secs 0" ARGS_NEW="--sys-interval-secs 1 \
#          --metrics-listen 127.0.0.1:29399" SCRAPE_NEW=127.0.0.1:29399 \
#          bench/ab.sh target/release/ringmq target/release/ringmq 5
# Environment: BROKER_CPU (default 1), LOAD_CPU (default 0), PORT_BASE (default: random, so two runs at once do not collide),
#   LOADGEN (default target/release/ringmq-loadgen), MQTT_OLD and MQTT_NEW (the protocol
#   ringmq-loadgen speaks against each side: 3 for 3.1.1 (default) or 5), ARGS_OLD and ARGS_NEW
#   (extra broker flags for each side), SCRAPE_OLD and SCRAPE_NEW (a metrics address each side
#   serves: scraped once a second during the run, as Prometheus would), CASES (load generator
#   arguments of the cases to run, separated by ';'; default: pairs QoS 0, pairs QoS 1, fan-in).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -ge 2 ] || { usage; exit 2; }
old="$1"; new="$2"; rounds="${3:-3}"
loadgen="${LOADGEN:-$root/target/release/ringmq-loadgen}"
broker_cpu="${BROKER_CPU:-1}"; load_cpu="${LOAD_CPU:-0}"; port="${PORT_BASE:-$((20000 + RANDOM % 20000))}"
mqtt_old="${MQTT_OLD:-3}"; mqtt_new="${MQTT_NEW:-3}"
args_old="${ARGS_OLD:-}"; args_new="${ARGS_NEW:-}"
scrape_old="${SCRAPE_OLD:-}"; scrape_new="${SCRAPE_NEW:-}"
for bin in "$old" "$new" "$loadgen"; do [ -x "$bin" ] || { log "$bin is missing"; exit 1; }; done
need python3
need taskset "taskset (util-linux)"
make_work ab

cases=("pairs -n 100 --qos 0 --max --inflight 100"
       "pairs -n 100 --qos 1 --max --inflight 100"
       "fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100")
[ -n "${CASES:-}" ] && IFS=';' read -ra cases <<< "$CASES"
echo "case | binary | round | received | broker CPU s | ns per message"
: > "$work/runs.txt"
for case in "${cases[@]}"; do
    for round in $(seq 1 "$rounds"); do
        for which in old new; do
            bin="$old"; mqtt="$mqtt_old"; args="$args_old"; scrape="$scrape_old"
            [ "$which" = new ] && { bin="$new"; mqtt="$mqtt_new"; args="$args_new"; scrape="$scrape_new"; }
            # shellcheck disable=SC2086
            start_on_free_port one_shard_conf "$broker_cpu" "$work/broker.log" "$bin" --config "$work/ringmq.toml" $args
            scraper=""
            if [ -n "$scrape" ]; then
                # Ends with its broker, and keeps no pipe open: a round that fails must not
                # leave it holding the output (and so the bench lock) forever.
                (while sleep 1 && kill -0 "$broker_pid" 2>/dev/null; do
                    curl -s "http://$scrape/metrics" > /dev/null || true
                done) > /dev/null 2>&1 &
                scraper=$!
            fi
            rm -rf "$work/out"
            t0=$(cpu_ticks "$broker_pid")
            # shellcheck disable=SC2086
            taskset -c "$load_cpu" "$loadgen" $case --mqtt "$mqtt" --port "$port" --warmup 1 --duration 4 \
                --drain 1 --out "$work/out" -q > /dev/null 2>&1
            still_running "$work/broker.log" "$case ($which: $bin)"
            t1=$(cpu_ticks "$broker_pid")
            [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
            stop_broker
            python3 - "$case" "$which" "$round" "$t0" "$t1" "$(getconf CLK_TCK)" "$work/out/summary.json" <<'PY'
import json, sys
case, which, round_, t0, t1, tck, path = sys.argv[1:]
received = json.load(open(path))["received"]
cpu_s = (int(t1) - int(t0)) / int(tck)
print(f"{case} | {which} | {round_} | {received} | {cpu_s:.2f} | {cpu_s * 1e9 / max(received, 1):.0f}")
PY
        done
    done
done | tee "$work/runs.txt"
echo
echo "case | old ns/msg (median) | new ns/msg (median) | new/old"
python3 - "$work/runs.txt" <<'PY'
import statistics, sys
ns = {}
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split("|")]
    if len(parts) == 6 and parts[1] in ("old", "new"):
        ns.setdefault(parts[0], {}).setdefault(parts[1], []).append(float(parts[5]))
for case, sides in ns.items():
    old, new = (statistics.median(sides.get(k, [0])) for k in ("old", "new"))
    print(f"{case} | {old:.1f} | {new:.1f} | {new / old if old else 0:.3f}")
PY
