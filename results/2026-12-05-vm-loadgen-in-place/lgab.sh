#!/usr/bin/env bash
# old vs new load generator against one broker binary (core 1), loadgen on core 0:
# msgs/s and loadgen CPU ns per message (sent + received)
CASE="$1"; ROUNDS=${ROUNDS:-3}
for r in $(seq 1 $ROUNDS); do for lg in old new; do
  port=$((30000 + RANDOM % 20000))
  taskset -c 1 /tmp/ringmq-ovf --listen 127.0.0.1:$port --sys-interval-secs 0 --log-level warn > /tmp/lgab-b.log 2>&1 & bp=$!
  sleep 0.4
  rm -rf /tmp/lgab-out; taskset -c 0 /tmp/lg-$lg $CASE --port $port --warmup 1 --duration 4 --out /tmp/lgab-out -q > /dev/null 2>&1
  bcpu=$(awk '{print ($14+$15)/100}' /proc/$bp/stat)
  kill $bp; wait $bp 2>/dev/null
  python3 - "$lg" "$r" "$bcpu" <<'PY'
import json,sys
d=json.load(open('/tmp/lgab-out/summary.json'))
lg,r,b=sys.argv[1],sys.argv[2],float(sys.argv[3])
n=d['sent']+d['received']
print(f"{lg} r{r}: {d['msgs_in_per_sec']/1e6:.2f}M msgs/s in, loadgen {d['loadgen_cpu_secs']*1e9/n:.0f} ns per message handled (sent+received), lost {d['lost']}, broker cpu {b:.2f}s")
PY
done; done
