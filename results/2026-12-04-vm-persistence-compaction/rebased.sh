#!/bin/bash
echo "lock taken $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== ab-compact rebased"; BIN=/tmp/snapprof/ringmq-rebased /tmp/snapprof/ab-compact-lowport.sh
echo "done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
