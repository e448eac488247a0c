#!/usr/bin/env bash
# ringmq against mosquitto, head to head, on one machine (see shared BENCHMARKING.md).
#
# One command on a fresh Debian/Ubuntu box: builds ringmq and ringmq-loadgen (release),
# installs mosquitto with apt-get if it is missing, then for every case and round starts each
# broker fresh on loopback with equivalent settings (no persistence, anonymous, unlimited
# in-flight and queues), pinned with taskset apart from the load generator, runs the load,
# samples the broker's CPU time (/proc/PID/stat) and memory (VmRSS), and stops it. Brokers are
# interleaved (A B A B ...) so drifting machine noise hits both alike; figures are medians.
#
# Writes results/<date>-<host>-<case>/ per case: run.json (commit, machine, exact commands,
# broker versions, every figure, ratios ringmq/mosquitto), summary.md, per-run folders with
# summary.json and .hgrm, and latency.svg comparing the brokers. Prints the head-to-head table.
#
# Usage: bench/compare.sh [--quick] [--rounds N] [--brokers ringmq,mosquitto] [--cases LIST]
#                         [--out DIR] [--no-build]
#   --quick    every case ~2 s, one round, small connection counts, output to a temp folder
#              unless --out is given (the CI dry run; under a minute after the build)
#   --cases    comma list of: fanin-qos0 pairs-qos0 pairs-qos1 fanout-qos0 latency-qos0 conn-idle
#              fanin-qos0-v5 pairs-qos0-v5 pairs-qos1-v5 (the same loads over MQTT 5.0)
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0), RINGMQ_SHARDS (default: number
#   of BROKER_CPUS), PORT_BASE (default 28900), CONNECTIONS (conn-idle, default 19000).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
rounds=3
brokers="ringmq,mosquitto"
cases="fanin-qos0,pairs-qos0,pairs-qos1,fanout-qos0,latency-qos0,conn-idle,fanin-qos0-v5,pairs-qos0-v5,pairs-qos1-v5"
out_root=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --rounds) rounds="$2"; shift ;;
        --brokers) brokers="$2"; shift ;;
        --cases) cases="$2"; shift ;;
        --out) out_root="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$rounds" in ''|*[!0-9]*|0) echo "compare.sh: --rounds needs a positive number" >&2; exit 2 ;; esac

# python3 assembles the JSON; taskset pins. Install what a minimal image lacks.
need=()
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "compare.sh: installing ${need[*]} with apt-get" >&2
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >&2
fi

BROKER_CPUS="${BROKER_CPUS:-1}"
LOAD_CPUS="${LOAD_CPUS:-0}"
count_cpus() { python3 -c "
import sys
n = 0
for part in sys.argv[1].split(','):
    lo, _, hi = part.partition('-')
    n += int(hi or lo) - int(lo) + 1
print(n)" "$1"; }
RINGMQ_SHARDS="${RINGMQ_SHARDS:-$(count_cpus "$BROKER_CPUS")}"
PORT_BASE="${PORT_BASE:-28900}"
if [ "$quick" = 1 ]; then
    rounds=1
    warmup=0.3; duration=1.5; drain=0.5
    connections="${CONNECTIONS:-2000}"
    [ -n "$out_root" ] || out_root="$(mktemp -d /tmp/ringmq-bench-quick.XXXXXX)"
else
    warmup=2; duration=8; drain=2
    connections="${CONNECTIONS:-19000}"
    [ -n "$out_root" ] || out_root="$root/results"
fi
mkdir -p "$out_root"
duration_us="$(python3 -c "print(int($duration * 1e6))")"
[ -n "${EPOCHREALTIME:-}" ] || { echo "compare.sh: needs bash 5 (EPOCHREALTIME)" >&2; exit 1; }

log() { echo "compare.sh: $*" >&2; }

# --- build and install ---------------------------------------------------------------------
if [ "$build" = 1 ]; then
    log "building ringmq and ringmq-loadgen (release)"
    cargo build --release -p ringmq -p ringmq-loadgen >&2
fi
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null \
    || echo "$root/target")"
RINGMQ="$target_dir/release/ringmq"
LOADGEN="$target_dir/release/ringmq-loadgen"
for bin in "$RINGMQ" "$LOADGEN"; do
    [ -x "$bin" ] || { log "$bin is missing: build with cargo build --release (or drop --no-build)"; exit 1; }
done
if [[ ",$brokers," == *",mosquitto,"* ]] && ! command -v mosquitto >/dev/null \
    && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing mosquitto with apt-get"
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mosquitto >&2
    # The package starts a system broker on 1883; ours run on their own ports, so leave it.
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

clk_tck="$(getconf CLK_TCK)"
work="$(mktemp -d /tmp/ringmq-bench.XXXXXX)"
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- brokers ---------------------------------------------------------------------------------
port="$PORT_BASE"
# start_broker NAME: a fresh broker on a fresh port, pinned to BROKER_CPUS; sets broker_pid,
# broker_cmd and port.
start_broker() {
    local name="$1"
    port=$((port + 1))
    case "$name" in
        mosquitto)
            cat > "$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 0
max_connections -1
set_tcp_nodelay true
log_dest none
EOF
            broker_conf="$work/mosquitto.conf"
            broker_cmd="taskset -c $BROKER_CPUS $MOSQUITTO -c $broker_conf"
            ;;
        ringmq)
            cat > "$work/ringmq.toml" <<EOF
listen = "127.0.0.1:$port"
shards = $RINGMQ_SHARDS
allow_anonymous = true

[limits]
connections_max = 1000000
inflight_max = 65535
offline_queue_max = 1000000
outbox_bytes_max = 268435456
EOF
            broker_conf="$work/ringmq.toml"
            broker_cmd="taskset -c $BROKER_CPUS $RINGMQ --config $broker_conf"
            ;;
        *) log "unknown broker $name (ringmq or mosquitto)"; exit 2 ;;
    esac
    $broker_cmd > "$work/$name.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            log "$name did not start:"; cat "$work/$name.log" >&2; exit 1
        fi
        sleep 0.05
    done
    log "$name is not accepting on port $port after 5 s"; cat "$work/$name.log" >&2; exit 1
}

stop_broker() {
    kill "$broker_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sockstat() { tr '\n' ';' < /proc/net/sockstat; }

# --- the matrix ------------------------------------------------------------------------------
case_args() {
    case "$1" in
        fanin-qos0)   echo "fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100" ;;
        pairs-qos0)   echo "pairs -n 100 --qos 0 --max --inflight 100" ;;
        pairs-qos1)   echo "pairs -n 100 --qos 1 --max --inflight 100" ;;
        fanout-qos0)  echo "fanout --publishers 1 --subscribers 100 --qos 0 --max --inflight 100" ;;
        latency-qos0) echo "pairs -n 100 --qos 0 --rate 20000" ;;
        conn-idle)    echo "conn -n $connections --subscribe --ramp 10000 --source 127.0.0.2-127.0.0.40" ;;
        *-v5)         echo "$(case_args "${1%-v5}") --mqtt 5" ;;
        *) log "unknown case $1"; exit 2 ;;
    esac
}

date_tag="$(date -u +%Y-%m-%d-%H%M)"
host="$(hostname -s 2>/dev/null || hostname)"
IFS=',' read -r -a case_list <<< "$cases"
IFS=',' read -r -a broker_list <<< "$brokers"
for c in "${case_list[@]}"; do case_args "$c" > /dev/null; done
case_dirs=()

for c in "${case_list[@]}"; do
    dir="$out_root/$date_tag-$host-$c"
    mkdir -p "$dir"
    case_dirs+=("$dir")
    : > "$dir/runs.jsonl"
    for round in $(seq 1 "$rounds"); do
        for b in "${broker_list[@]}"; do
            start_broker "$b"
            run_dir="$dir/$b-r$round"
            ready="$work/ready"; rm -f "$ready"
            rss_before="$(rss_kb "$broker_pid")"
            loadavg_before="$(cut -d' ' -f1-3 /proc/loadavg)"
            sock_before="$(sockstat)"
            # shellcheck disable=SC2046
            lg_cmd="taskset -c $LOAD_CPUS $LOADGEN $(case_args "$c") --port $port \
--warmup $warmup --duration $duration --drain $drain --cpus $LOAD_CPUS --label $b \
--out $run_dir --ready-file $ready -q"
            lg_cmd="$(echo "$lg_cmd" | tr -s ' ')"
            log "[$c round $round/$rounds] $b: $lg_cmd"
            $lg_cmd > "$work/loadgen.out" 2> "$work/loadgen.err" &
            lg_pid=$!
            # Sample the broker's CPU over the measured window (from the ready file, written
            # when measuring starts, for --duration seconds), and its memory at that start:
            # for the conn case, every connection is up and held then.
            t0=""; t1=""; ticks0=0; ticks1=0; rss_held=0; sock_held=""
            while kill -0 "$lg_pid" 2>/dev/null; do
                now_us="${EPOCHREALTIME/./}"
                if [ -z "$t0" ] && [ -e "$ready" ]; then
                    t0="$now_us"; ticks0="$(cpu_ticks "$broker_pid")"
                    rss_held="$(rss_kb "$broker_pid")"; sock_held="$(sockstat)"
                elif [ -n "$t0" ] && [ -z "$t1" ] && [ $((now_us - t0)) -ge "$duration_us" ]; then
                    t1="$now_us"; ticks1="$(cpu_ticks "$broker_pid")"
                fi
                sleep 0.05
            done
            lg_rc=0; wait "$lg_pid" || lg_rc=$?
            if [ -z "$t1" ]; then t1="${EPOCHREALTIME/./}"; ticks1="$(cpu_ticks "$broker_pid")"; fi
            [ -n "$t0" ] || { t0="$t1"; ticks0="$ticks1"; }
            alive=1; kill -0 "$broker_pid" 2>/dev/null || alive=0
            stop_broker
            if [ "$lg_rc" != 0 ] || [ ! -f "$run_dir/summary.json" ]; then
                log "load generator failed (exit $lg_rc):"; cat "$work/loadgen.err" >&2; exit 1
            fi
            cp "$work/loadgen.out" "$run_dir/summary.txt"
            python3 - "$dir/runs.jsonl" <<EOF
import json, sys
run = {
    "case": "$c", "broker": "$b", "round": $round, "dir": "$(basename "$run_dir")",
    "broker_command": "$broker_cmd", "loadgen_command": "$lg_cmd",
    "broker_config": open("$broker_conf").read(),
    "broker_alive_after": bool($alive),
    "sample_secs": ($t1 - $t0) / 1e6,
    "loadavg_before": "$loadavg_before",
    "broker_cpu_secs": ($ticks1 - $ticks0) / $clk_tck,
    "broker_rss_kb_before": int("$rss_before" or 0),
    "broker_rss_kb_held": int("$rss_held" or 0),
    "sockstat_before": "$sock_before", "sockstat_held": "$sock_held",
}
run["broker_cpu_pct"] = 100 * run["broker_cpu_secs"] / run["sample_secs"] if run["sample_secs"] > 0 else None
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(run) + "\n")
EOF
        done
    done
done

# --- report ----------------------------------------------------------------------------------
versions="$work/versions.json"
python3 - "$versions" <<EOF
import json, subprocess, sys
def out(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as e:
        return f"unknown ({e})"
json.dump({
    "ringmq": out("$RINGMQ --version"),
    "mosquitto": out("$MOSQUITTO -h 2>&1 | head -1"),
    "loadgen": out("$LOADGEN --version"),
}, open(sys.argv[1], "w"))
EOF
python3 "$here/report.py" --versions "$versions" --quick "$quick" \
    --broker-cpus "$BROKER_CPUS" --load-cpus "$LOAD_CPUS" --rounds "$rounds" \
    --loadgen "$LOADGEN" --readme "$([ "$quick" = 1 ] || echo "$out_root/README.md")" \
    "${case_dirs[@]}"
log "results in $out_root"
