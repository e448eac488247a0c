#!/usr/bin/env bash
# Broker CPU per message with transparent huge pages on (mimalloc's default) and off
# (MIMALLOC_ALLOW_THP=0), same binary, interleaved A B A B: does turning them off cost the hot
# path? One shard pinned to BROKER_CPUS (default 1), ringmq-loadgen pairs QoS 0 (100 pairs,
# window 100, --max) on LOAD_CPUS (default 0). CPU = utime + stime of the broker over the whole
# load run (connects included), divided by the messages the subscribers received.
# Usage: thp-cpu-ab.sh BINARY LOADGEN [ROUNDS]   (run under flock /tmp/bench.lock)
set -euo pipefail
bin="$1"; loadgen="$2"; rounds="${3:-3}"
work="$(mktemp -d /tmp/ringmq-thp-ab.XXXXXX)"; trap 'rm -rf "$work"' EXIT
tck="$(getconf CLK_TCK)"
echo "round | THP | broker CPU ticks | messages received | CPU ns per message | msgs/s (loadgen)"
for round in $(seq "$rounds"); do
    for thp in on off; do
        port=$((30000 + RANDOM % 20000))
        printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n' "$port" > "$work/b.toml"
        if [ "$thp" = off ]; then
            MIMALLOC_ALLOW_THP=0 taskset -c "${BROKER_CPUS:-1}" "$bin" --config "$work/b.toml" > "$work/b.log" 2>&1 &
        else
            taskset -c "${BROKER_CPUS:-1}" "$bin" --config "$work/b.toml" > "$work/b.log" 2>&1 &
        fi
        pid=$!
        for _ in $(seq 200); do grep -q "listening on" "$work/b.log" && break; sleep 0.05; done
        grep THP_enabled "/proc/$pid/status" > "$work/thp"
        before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        rm -rf "$work/out"
        taskset -c "${LOAD_CPUS:-0}" "$loadgen" pairs -n 100 --qos 0 --max --inflight 100 \
            --port "$port" --warmup 1 --duration 5 --drain 0.5 --out "$work/out" --label ringmq -q > /dev/null 2>&1
        after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        kill "$pid"; wait "$pid" 2>/dev/null || true
        python3 - "$round" "$thp" "$((after - before))" "$tck" "$work/out" "$(cat "$work/thp")" <<'PY'
import json, sys, glob
rnd, thp, ticks, tck, out, status = sys.argv[1:]
s = json.load(open(glob.glob(out + "/**/summary.json", recursive=True)[0]))
ns = int(ticks) / int(tck) * 1e9 / max(s["received"], 1)
print(f"{rnd} | {thp} ({status.split()[-1]}) | {ticks} | {s['received']} | {ns:.0f} | {s['msgs_in_per_sec']:.0f}")
PY
    done
done
