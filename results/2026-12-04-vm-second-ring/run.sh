#!/usr/bin/env bash
# Connect latency of clients on a shard's second ring: 1 shard x 2 rings of 500 fixed-file
# slots, 900 idle subscribed connections at 900/s (the first 500 fill ring 0, the other 400
# land on ring 1), broker on core 1, ringmq-loadgen on core 0; OLD and NEW interleaved.
# Usage: run.sh OLD_BINARY NEW_BINARY [ROUNDS]
set -u
old="$1"; new="$2"; rounds="${3:-3}"
lg="${LOADGEN:-target/release/ringmq-loadgen}"
port=9750
for round in $(seq "$rounds"); do
    for side in old new; do
        bin="$old"; [ "$side" = new ] && bin="$new"
        port=$((port + 1))
        conf="$(mktemp /tmp/second-ring.XXXXXX.toml)"
        printf 'listen = "127.0.0.1:%s"\nshards = 1\nrings_per_shard = 2\nring_files_max = 500\nallow_anonymous = true\n' "$port" > "$conf"
        taskset -c 1 "$bin" --config "$conf" > /dev/null 2>&1 &
        pid=$!
        sleep 0.5
        line="$(timeout 60 taskset -c 0 "$lg" conn -n 900 --subscribe --ramp 900 \
            --source 127.0.0.2-127.0.0.40 --port "$port" --warmup 1 --duration 2 --drain 0.5 \
            --cpus 0 -q 2>&1 | grep '^connections:')"
        echo "$side round $round: $line"
        kill "$pid"; wait "$pid" 2>/dev/null
        rm -f "$conf"
    done
done
