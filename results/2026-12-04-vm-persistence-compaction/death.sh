#!/bin/bash
# off mode as in bench/persistence.sh, broker log and exit status kept
lg=/work/wt/snapshot/target/release/ringmq-loadgen; w=/tmp/snapprof/death; mkdir -p $w
echo "lock taken $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3 4; do
 port=$((27400+i)); rm -rf $w/out
 printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n' $port > $w/r.toml
 taskset -c 1 /tmp/snapprof/ringmq-after2 --config $w/r.toml > $w/broker-$i.log 2>&1 & bp=$!
 for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
 taskset -c 0 $lg pairs -n 100 --qos 1 --max --inflight 100 --clean-session false --port $port --warmup 1 --duration 4 --drain 1 --out $w/out -q > $w/lg-$i.txt 2>&1
 if kill -0 $bp 2>/dev/null; then echo "run $i: alive"; kill $bp; wait $bp; else wait $bp; echo "run $i: broker exited with $?"; tail -5 $w/broker-$i.log; fi
 python3 -c "import json;s=json.load(open('$w/out/summary.json'));print(s['received'],s['msgs_in_per_sec'])" || true
done
free -m
