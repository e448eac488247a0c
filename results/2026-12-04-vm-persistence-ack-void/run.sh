#!/usr/bin/env bash
# Old against new binary under bench/persistence.sh (pairs x100 at QoS 1 between persistent
# sessions, one shard on core 1, ringmq-loadgen on core 0), interleaved OLD NEW per round so a
# busy moment of the shared VM hits both; prints every run and the medians per binary and mode.
# Usage: run.sh OLD_BINARY NEW_BINARY ROUNDS   (from the repository root)
set -euo pipefail
old="$1"; new="$2"; rounds="${3:-4}"
out="$(mktemp)"
for round in $(seq 1 "$rounds"); do
    for side in old new; do
        bin="$old"; [ "$side" = new ] && bin="$new"
        MODES="off ack interval" MOSQUITTO=none bench/persistence.sh "$bin" 1 2>&1 \
            | awk -F'|' -v side="$side" -v r="$round" 'NF == 6 && $2 ~ /[0-9]/ {
                gsub(/ /, "", $1); printf "%s | %s | %s |%s|%s\n", side, $1, r, $4, $6 }' \
            | tee -a "$out"
    done
done
echo
echo "side | mode | msgs/s (median) | x off (same side) | ns/msg (median)"
python3 - "$out" <<'PY'
import statistics, sys
rate, ns = {}, {}
for line in open(sys.argv[1]):
    side, mode, _, r, n = [p.strip() for p in line.split("|")]
    rate.setdefault((side, mode), []).append(float(r))
    ns.setdefault((side, mode), []).append(float(n))
for side in ("old", "new"):
    off = statistics.median(rate[(side, "off")])
    for mode in ("off", "ack", "interval"):
        r = statistics.median(rate[(side, mode)])
        print(f"{side} | {mode} | {r:.0f} | {r / off:.2f} | {statistics.median(ns[(side, mode)]):.0f}")
PY
