#!/usr/bin/env bash
# A client that never reads (issue 7 item 6): broker RSS growth while one client floods PINGREQs
# (or QoS 1 PUBLISHes, each owing a PUBACK) for SECS seconds and reads none of the answers.
#
# Starts a FRESH broker (one shard pinned to BROKER_CPUS, a generated TOML with the default
# limits unless --outbox-bytes-max / --stall-secs say otherwise), runs bench/flood.py pinned to
# LOAD_CPUS, which samples the broker's VmRSS once a second, then stops the broker and prints
# the flood's JSON (RSS before/after/peak, bytes written, seconds the writes were blocked) and the
# broker's counters line. Before issue 7 the broker read everything and buffered every answer;
# now it stops reading past outbox_bytes_max, so the flooder's writes block.
#
# Usage: bench/flood.sh [--broker BIN] [--secs S] [--kind pingreq|publish]
#                       [--outbox-bytes-max B] [--stall-secs S] [--port P] [--no-build]
#   --broker BIN   the broker binary (default: target/release/ringmq, built unless --no-build);
#                  pass an older build to measure before/after
#   --secs S       seconds of flooding (default 15)
#   --stall-secs S limits.outbox_stall_secs (default 0 here, so the flood runs its whole time;
#                  older brokers do not know the key: it is left out unless given)
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$root"

binary=""
secs=15
kind=pingreq
outbox=""
stall=""
port=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --broker) binary="$2"; shift ;;
        --secs) secs="$2"; shift ;;
        --kind) kind="$2"; shift ;;
        --outbox-bytes-max) outbox="$2"; shift ;;
        --stall-secs) stall="$2"; shift ;;
        --port) port="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "flood.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
need python3
need taskset "taskset (util-linux)"
broker_binary
[ -n "$port" ] || port=$((20000 + RANDOM % 20000))

make_work flood
{
    echo "listen = \"127.0.0.1:$port\""
    echo "shards = 1"
    echo "[limits]"
    [ -z "$outbox" ] || echo "outbox_bytes_max = $outbox"
    [ -z "$stall" ] || echo "outbox_stall_secs = $stall"
} > "$work/broker.toml"

start_broker "$BROKER_CPUS" "$work/broker.log" "$binary" --config "$work/broker.toml"
wait_listening "$work/broker.log"
sleep 0.5

taskset -c "$LOAD_CPUS" python3 "$here/flood.py" --port "$port" --pid "$broker_pid" \
    --secs "$secs" --kind "$kind" > "$work/flood.json"
stop_broker INT

echo "broker: $binary (script at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "config: $(tr '\n' ' ' < "$work/broker.toml")"
python3 - "$work/flood.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"flood: {r['kind']} for {r['secs']} s, {r['written_bytes'] / 2**20:.1f} MiB written, "
      f"writes waited {r['blocked_s']} s in all, longest without a byte taken "
      f"{r['longest_blocked_s']} s, closed by broker: {r['closed_by_broker']}")
print(f"broker RSS: {r['rss_before_kib'] / 1024:.1f} MiB -> {r['rss_after_kib'] / 1024:.1f} MiB "
      f"(growth {r['rss_growth_kib'] / 1024:.1f} MiB, peak {r['rss_peak_kib'] / 1024:.1f} MiB)")
print("samples (s, RSS MiB): " + ", ".join(
    f"{s['t_s']:.0f}:{s['rss_kib'] / 1024:.0f}" for s in r["samples"]))
EOF
grep "stopped" "$work/broker.log" || true
