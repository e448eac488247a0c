#!/bin/bash
# before and after, alternating per 1 full bench run of 5 rounds each? No: 5 rounds each, before then after, then load
cd /work/wt/snapshot
while [ ! -x /tmp/snapprof/ringmq-after ]; do sleep 2; done
echo "lock taken $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== before (6d99610)"; MOSQUITTO=none PORT_BASE=29700 bench/persistence.sh /tmp/snapprof/ringmq-before 5
echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)"
echo "== after"; MOSQUITTO=none PORT_BASE=29800 bench/persistence.sh /tmp/snapprof/ringmq-after 5
echo "done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== perf of after"; BIN=/tmp/snapprof/ringmq-after /tmp/snapprof/run.sh 2>&1 | tail -4
echo "== ab-compact after"; BIN=/tmp/snapprof/ringmq-after /tmp/snapprof/ab-compact.sh
echo "== ab-compact before"; BIN=/tmp/snapprof/ringmq-before /tmp/snapprof/ab-compact.sh
echo "end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
