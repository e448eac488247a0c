#!/usr/bin/env bash
# ack mode, compaction at the default (64 MiB) vs never: same case as bench/persistence.sh.
# BIN, LOADGEN and PORT default to what this folder's run used; the compaction folder's runs
# call this script with theirs.
set -euo pipefail
BIN="${BIN:-/tmp/durable-bench/ringmq}"; LOADGEN="${LOADGEN:-/tmp/durable-bench/ringmq-loadgen}"
w=$(mktemp -d /tmp/durable-ab.XXXXXX); port="${PORT:-29650}"
for round in 1 2; do
for c in 67108864 4611686018427387904; do
  port=$((port+1)); rm -rf $w/data $w/out
  printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n[persistence]\nmode = "on"\ndir = "%s"\nsync = "ack"\ncompact_min_bytes = %s\n' $port $w/data $c > $w/r.toml
  taskset -c 1 "$BIN" --config $w/r.toml > $w/log 2>&1 & pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  taskset -c 0 "$LOADGEN" pairs -n 100 --qos 1 --max --inflight 100 --clean-session false --port $port --warmup 1 --duration 4 --drain 1 --out $w/out -q >/dev/null 2>&1
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid || true
  python3 -c "import json;s=json.load(open('$w/out/summary.json'));cpu=($t1-$t0)/100;print('compact_min_bytes=$c round $round', s['received'], round(s['msgs_in_per_sec']), 'cpu', cpu, 'ns/msg', round(cpu*1e9/s['received']))"
  echo "compactions: $(grep -c 'compacted,' $w/log || true)"
done; done
rm -rf $w
