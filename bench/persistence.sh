#!/usr/bin/env bash
# Persistence cost (issue 10): pairs at QoS 1 on one shard with persistent sessions (clean
# session 0, so every message is recorded for its subscriber and every PUBACK waits for that
# record), persistence off vs sync = "ack" vs sync = "interval", interleaved over ROUNDS
# rounds, and mosquitto with `persistence true` in the same rounds (MOSQUITTO=none leaves it
# out; its autosave_interval stays at the default, 1800 s: it writes its database then and at
# exit, so its figure is that of a broker that keeps nothing a kill -9 would spare). One ringmq
# binary; the log directory is a fresh folder under WORK_DIR (default /tmp: say where the
# disk under test is).
#
# Prints every run (messages received per second, broker CPU ns per message), then the median
# per mode and its ratio to "off" (issue 10's goal: sync = "ack" at >= 0.5x of "off").
#
# Usage: bench/persistence.sh [BINARY] [ROUNDS]
#   cargo build --release -p ringmq -p ringmq-loadgen && bench/persistence.sh
# Environment: BROKER_CPU (default 1), LOAD_CPU (default 0), PORT_BASE (default 29600),
#   LOADGEN (default target/release/ringmq-loadgen), PAIRS (default 100), WORK_DIR,
#   MOSQUITTO (default: mosquitto on the PATH or /usr/sbin/mosquitto; "none": not run),
#   MODES (default "off ack interval"; also "ack-nocompact": sync = "ack" with compaction never
#   triggered, to see what compaction costs, e.g. MODES="ack ack-nocompact" MOSQUITTO=none).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ "${1:-}" = "--help" ] && { usage; exit 0; }
bin="${1:-$root/target/release/ringmq}"; rounds="${2:-3}"
loadgen="${LOADGEN:-$root/target/release/ringmq-loadgen}"
broker_cpu="${BROKER_CPU:-1}"; load_cpu="${LOAD_CPU:-0}"; port="${PORT_BASE:-29600}"
pairs="${PAIRS:-100}"
for b in "$bin" "$loadgen"; do [ -x "$b" ] || { log "$b is missing"; exit 1; }; done
need python3
need taskset "taskset (util-linux)"
work="$(mktemp -d "${WORK_DIR:-/tmp}/ringmq-persistence.XXXXXX")"
mosquitto="${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
modes="${MODES:-off ack interval}"
if [ "$mosquitto" != none ]; then
    [ -x "$mosquitto" ] || { log "$mosquitto is missing (MOSQUITTO=none to leave it out)"; exit 1; }
    modes="$modes mosquitto"
fi

case="pairs -n $pairs --qos 1 --max --inflight 100 --clean-session false"
echo "# $case; log dir under $work ($(df -T "$work" | awk 'NR==2 {print $2}'))"
echo "mode | round | received | msgs/s | broker CPU s | ns per message"
# The config of $mode's broker for $port (start_on_free_port calls it).
broker_conf() {
    if [ "$mode" = mosquitto ]; then
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_inflight_messages 0\nmax_queued_messages 0\nset_tcp_nodelay true\nlog_dest none\n' \
            "$port" "$work/mosq" > "$work/mosquitto.conf"
        return
    fi
    printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n' \
        "$port" > "$work/ringmq.toml"
    if [ "$mode" != off ]; then
        printf '[persistence]\nmode = "on"\ndir = "%s"\nsync = "%s"\n' "$work/data" "${mode%-nocompact}" \
            >> "$work/ringmq.toml"
        # Compaction starts past compact_min_bytes: 2^62 is never.
        [ "$mode" = "${mode%-nocompact}" ] || echo 'compact_min_bytes = 4611686018427387904' >> "$work/ringmq.toml"
    fi
}
for round in $(seq 1 "$rounds"); do
    for mode in $modes; do
        if [ "$mode" = mosquitto ]; then
            rm -rf "$work/mosq" && mkdir -p "$work/mosq"
            start_on_free_port broker_conf "$broker_cpu" "$work/broker.log" "$mosquitto" -c "$work/mosquitto.conf"
        else
            [ "$mode" = off ] || rm -rf "$work/data"
            start_on_free_port broker_conf "$broker_cpu" "$work/broker.log" "$bin" --config "$work/ringmq.toml"
        fi
        rm -rf "$work/out"
        t0=$(cpu_ticks "$broker_pid")
        # shellcheck disable=SC2086
        taskset -c "$load_cpu" "$loadgen" $case --port "$port" --warmup 1 --duration 4 \
            --drain 1 --out "$work/out" -q > /dev/null 2>&1
        still_running "$work/broker.log" "round $round, $mode"
        t1=$(cpu_ticks "$broker_pid")
        stop_broker
        python3 - "$mode" "$round" "$t0" "$t1" "$(getconf CLK_TCK)" "$work/out/summary.json" <<'PY'
import json, sys
mode, round_, t0, t1, tck, path = sys.argv[1:]
summary = json.load(open(path))
received = summary["received"]
cpu_s = (int(t1) - int(t0)) / int(tck)
print(f"{mode} | {round_} | {received} | {summary['msgs_in_per_sec']:.0f} | {cpu_s:.2f} | "
      f"{cpu_s * 1e9 / max(received, 1):.0f}")
PY
    done
done | tee "$work/runs.txt"
echo
echo "mode | msgs/s (median) | x off | ns/msg (median)"
python3 - "$work/runs.txt" <<'PY'
import statistics, sys
rate, ns = {}, {}
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split("|")]
    if len(parts) == 6 and parts[1].isdigit():
        rate.setdefault(parts[0], []).append(float(parts[3]))
        ns.setdefault(parts[0], []).append(float(parts[5]))
off = statistics.median(rate["off"]) if "off" in rate else 0
for mode in rate:
    r = statistics.median(rate[mode])
    x_off = f"{r / off:.2f}" if off else "-"
    print(f"{mode} | {r:.0f} | {x_off} | {statistics.median(ns[mode]):.0f}")
PY
