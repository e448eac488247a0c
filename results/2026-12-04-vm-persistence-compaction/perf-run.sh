#!/bin/bash
# one ack run with perf record on the broker
set -e
bin=${BIN:-/work/wt/snapshot/target/release/ringmq}; lg=/work/wt/snapshot/target/release/ringmq-loadgen
w=/tmp/snapprof; port=${PORT:-29951}
rm -rf $w/data $w/out
printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n[persistence]\nmode = "on"\ndir = "%s"\nsync = "ack"\n' $port $w/data > $w/r.toml
RUST_LOG=info taskset -c 1 $bin --config $w/r.toml > $w/broker.log 2>&1 &
bp=$!
sleep 1
perf record -g -o $w/perf.data -p $bp 2>/dev/null &
pp=$!
taskset -c 0 $lg pairs -n 100 --qos 1 --max --inflight 100 --clean-session false --port $port --warmup 1 --duration 4 --drain 1 --out $w/out -q >/dev/null 2>&1
kill -INT $pp; wait $pp || true
kill $bp; wait $bp || true
grep -i compact $w/broker.log || true
python3 -c "import json;s=json.load(open('$w/out/summary.json'));print(s['received'],s['msgs_in_per_sec'])"
ls -la $w/data/*/
