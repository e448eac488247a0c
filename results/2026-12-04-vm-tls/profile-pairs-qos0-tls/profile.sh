#!/usr/bin/env bash
# perf profile of one ringmq shard serving pairs QoS 0 over TLS (cpu-clock sampling: no
# hardware counters on this VM). Usage: profile.sh OUTDIR [loadgen case args...]
set -euo pipefail
out="$1"; shift
case_args=("$@"); [ ${#case_args[@]} -gt 0 ] || case_args=(pairs -n 100 --qos 0 --max --inflight 100)
cd /work/wt/tlsbench
. bench/tls.sh
w="$(mktemp -d /tmp/ringmq-tlsprof.XXXXXX)"
make_test_certs "$w/pki" rsa
port=$((20000 + RANDOM % 20000))
cat > "$w/r.toml" <<TOML
shards = 1
allow_anonymous = true

[limits]
connections_max = 1000000
inflight_max = 65535
offline_queue_max = 1000000
outbox_bytes_max = 268435456

[[listener]]
bind = "127.0.0.1:$port"
protocol = "mqtt+tls"
certfile = "$w/pki/server.pem"
keyfile = "$w/pki/server.key"
TOML
taskset -c 1 target/release/ringmq --config "$w/r.toml" > "$w/broker.log" 2>&1 &
bpid=$!
sleep 1
taskset -c 0 target/release/ringmq-loadgen "${case_args[@]}" --port "$port" --tls-ca "$w/pki/ca.pem" \
    --warmup 1 --duration 8 --cpus 0 -q > "$w/lg.out" 2>&1 &
lpid=$!
sleep 3
mkdir -p "$out"
perf record -e cpu-clock -F 2000 -g -p "$bpid" -o "$out/perf.data" -- sleep 5 2> "$out/perf-record.err" || true
wait "$lpid" || true
kill "$bpid"; wait "$bpid" 2>/dev/null || true
cp "$w/lg.out" "$out/loadgen.txt"
perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v "^$" | head -80 > "$out/flat.txt" || true
perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -20 > "$out/dso.txt" || true
rm -rf "$w"
