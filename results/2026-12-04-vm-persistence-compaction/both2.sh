#!/bin/bash
cd /work/wt/snapshot
echo "lock taken $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== before (6d99610)"; MOSQUITTO=none PORT_BASE=27100 bench/persistence.sh /tmp/snapprof/ringmq-before 5
echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)"
echo "== after"; MOSQUITTO=none PORT_BASE=27200 bench/persistence.sh /tmp/snapprof/ringmq-after 5
echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)"
if [ -x /tmp/snapprof/ringmq-after2 ]; then
echo "== after2 (foldhash)"; MOSQUITTO=none PORT_BASE=27300 bench/persistence.sh /tmp/snapprof/ringmq-after2 5
echo "== ab-compact after2"; BIN=/tmp/snapprof/ringmq-after2 PORTX=1 /tmp/snapprof/ab-compact.sh
fi
for b in before after2; do
  echo "== perf of $b"; BIN=/tmp/snapprof/ringmq-$b /tmp/snapprof/run.sh 2>&1 | grep -v "^total\|^d\|^-"; cp /tmp/snapprof/broker.log /tmp/snapprof/broker-$b.log
  perf report -i /tmp/snapprof/perf.data --no-children --percent-limit 1 --stdio -g none 2>/dev/null | grep "%" > /tmp/snapprof/perf-$b-top.txt
  perf report -i /tmp/snapprof/perf.data --children --stdio -g none 2>/dev/null | grep -i "persist\|compact\|clear_page\|finish_grow\|crc32c" > /tmp/snapprof/perf-$b-compaction.txt
done
echo "done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
