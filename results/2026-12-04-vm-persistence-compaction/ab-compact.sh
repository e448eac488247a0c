#!/usr/bin/env bash
# ack mode, compaction at the default (64 MiB) vs never: the A/B of
# ../2026-12-04-vm-persistence-pairs-qos1-mosquitto/ab-compact.sh with this folder's binaries
# (BIN from the caller: both.sh / rebased.sh) and ports.
exec env BIN="${BIN:?BIN: the ringmq binary}" LOADGEN=/work/wt/snapshot/target/release/ringmq-loadgen \
    PORT="${PORT:-29660}" "$(dirname "$0")/../2026-12-04-vm-persistence-pairs-qos1-mosquitto/ab-compact.sh"
