#!/usr/bin/env bash
# ringmq against mosquitto and its fastest peers (rumqttd, FlashMQ), head to head, on one machine
# (see shared BENCHMARKING.md).
#
# One command on a fresh Debian/Ubuntu box: builds ringmq and ringmq-loadgen (release),
# installs mosquitto with apt-get if it is missing, then for every case and round starts each
# broker fresh on loopback with equivalent settings (no persistence, anonymous, unlimited
# in-flight and queues), pinned with taskset apart from the load generator, runs the load,
# samples the broker's CPU time (/proc/PID/stat) and memory (VmRSS), and stops it. Brokers are
# interleaved (A B A B ...) so drifting machine noise hits both alike; figures are medians.
#
# Writes results/<date>-<host>-<case>/ per case: run.json (commit, machine, exact commands,
# broker versions, every figure, ratios ringmq/mosquitto and ringmq/best peer), summary.md, per-run folders with
# summary.json and .hgrm, and latency.svg comparing the brokers. Prints the head-to-head table.
#
# Peers: rumqttd (`cargo install rumqttd --version 0.20.0`; found on PATH, in ~/.cargo/bin, or
# as RUMQTTD_BIN=...) and FlashMQ (a binary you build: FLASHMQ_BIN=..., or `flashmq` on PATH).
# A peer that is not installed is skipped with one line saying so; the run goes on without it.
# Equivalent settings for every broker: anonymous, no persistence, in-flight and queue limits
# raised, TCP_NODELAY where the broker lets it be set, and as many worker threads as
# BROKER_CPUS has cores (FlashMQ thread_count, ringmq shards; mosquitto has one thread; rumqttd
# has no thread setting -- its router thread and its one listener thread share the taskset).
# Ratios: ringmq / mosquitto, and ringmq / the best peer of that case (highest rate, lowest
# latency or memory).
#
# Usage: bench/compare.sh [--quick] [--rounds N] [--brokers ringmq,mosquitto,rumqttd,flashmq]
#                         [--cases LIST] [--out DIR] [--no-build]
#   --quick    every case ~2 s, one round, small connection counts, output to a temp folder
#              unless --out is given (the CI dry run; under a minute after the build)
#   --brokers  comma list (default all four; absent peers are skipped)
#   --cases    comma list of: fanin-qos0 pairs-qos0 pairs-qos1 fanout-qos0 latency-qos0 conn-idle
#              fanin-qos0-v5 pairs-qos0-v5 pairs-qos1-v5 (the same loads over MQTT 5.0),
#              pairs-rate-R (latency-qos0 at R msgs/s), pairs-load-P (latency-qos0 at P % of
#              each broker's own maximum, given as MAX_RATES=ringmq=R1,mosquitto=R2,...;
#              bench/latency.sh measures it first),
#              pairs-qos0-retain pairs-qos1-retain (any case + -retain: every publish retained,
#              each topic's message replacing the last),
#              pairs-qos0-tls pairs-qos1-tls (the same loads over TLS) handshake-tls handshake
#              (clients connecting, CONNECT/CONNACK, disconnecting, again: handshakes per
#              second and broker CPU per handshake, over TLS and plain TCP). Any case + -tls
#              runs over TLS, ringmq and mosquitto only: both listen with one certificate made
#              at run time with openssl (bench/tls.sh; TLS_KEY=rsa, RSA 2048, or ec, P-256), the
#              load generator trusts its CA (--tls-ca). With a case and its -tls twin in one run
#              the table ends with each broker's TLS / plain ratio.
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0), RINGMQ_SHARDS (default: number
#   of BROKER_CPUS), PORT_BASE (default 28900), CONNECTIONS (conn-idle, default 19000),
#   RUMQTTD_BIN, FLASHMQ_BIN (the peers' binaries), RINGMQ_BIN and LOADGEN_BIN (ours, default
#   target/release/ringmq and ringmq-loadgen: e.g. an older build, with --no-build), PAIRS (pairs cases, default 100),
#   FANIN_PUBLISHERS (fanin cases, default 8), TLS_KEY (default rsa).
set -euo pipefail
# For mosquitto_conf and ringmq_limits; this script keeps its own copies of the rest (defined below, they
# replace lib.sh's, and so does its EXIT trap).
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
rounds=3
brokers="ringmq,mosquitto,rumqttd,flashmq"
cases="fanin-qos0,pairs-qos0,pairs-qos1,fanout-qos0,latency-qos0,conn-idle,fanin-qos0-v5,pairs-qos0-v5,pairs-qos1-v5,pairs-qos0-tls,pairs-qos1-tls,handshake-tls"
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
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$rounds" in ''|*[!0-9]*|0) echo "compare.sh: --rounds needs a positive number" >&2; exit 2 ;; esac

# python3 assembles the JSON; taskset pins. Install what a minimal image lacks.
need=()
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
[[ ",$cases," != *"-tls,"* ]] || command -v openssl >/dev/null || need+=(openssl)
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
PAIRS="${PAIRS:-100}"
FANIN_PUBLISHERS="${FANIN_PUBLISHERS:-8}"
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
RINGMQ="${RINGMQ_BIN:-$target_dir/release/ringmq}"
LOADGEN="${LOADGEN_BIN:-$target_dir/release/ringmq-loadgen}"
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
# The peers are never installed by this script (rumqttd takes minutes to compile, FlashMQ is
# built by hand): each one found is run, each one missing is dropped with a line saying so.
RUMQTTD="${RUMQTTD_BIN:-$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")}"
FLASHMQ="${FLASHMQ_BIN:-$(command -v flashmq || echo "")}"
kept=()
for b in $(echo "$brokers" | tr ',' ' '); do
    case "$b" in
        rumqttd)
            if [ ! -x "$RUMQTTD" ]; then
                log "skipping rumqttd: not installed (cargo install rumqttd --version 0.20.0, or RUMQTTD_BIN=/path/to/rumqttd)"
                continue
            fi ;;
        flashmq)
            if [ -z "$FLASHMQ" ] || [ ! -x "$FLASHMQ" ]; then
                log "skipping flashmq: no binary (build FlashMQ and set FLASHMQ_BIN=/path/to/flashmq)"
                continue
            fi ;;
        ringmq|mosquitto) ;;
        *) log "unknown broker $b (ringmq, mosquitto, rumqttd or flashmq)"; exit 2 ;;
    esac
    kept+=("$b")
done
[ ${#kept[@]} -gt 0 ] || { log "no broker to run"; exit 2; }
brokers="$(IFS=','; echo "${kept[*]}")"

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

# The TLS cases' CA and server certificate, one for both brokers (made once, if needed).
TLS_KEY="${TLS_KEY:-rsa}"
pki="$work/pki"
if [[ ",$cases," == *"-tls,"* ]]; then
    chmod 755 "$work"   # mosquitto, as its own user, reads the certificate files in it
    . "$here/tls.sh"
    make_test_certs "$pki" "$TLS_KEY"
fi

# --- brokers ---------------------------------------------------------------------------------
port="$PORT_BASE"
# start_broker NAME [tls]: a fresh broker on a fresh port, pinned to BROKER_CPUS; sets
# broker_pid, broker_cmd and port. With tls, that port speaks TLS with the certificate in $pki.
start_broker() {
    local attempt
    # A port may be taken by any socket bound to it, a client's included (the bench scripts
    # widen the ephemeral range to 10000-65535): a broker that exits at once gets the next one.
    for attempt in 1 2 3 4 5; do
        start_broker_once "$@" && return 0
        log "$1 exited at start on port $port (taken?); trying the next port"
    done
    log "$1 did not start:"; cat "$work/$1.log" >&2; exit 1
}

# One try of start_broker: returns 1 when the broker exited before it listened.
start_broker_once() {
    local name="$1" tls="${2:-}" mosquitto_tls="" ringmq_listener
    port=$((port + 1))
    ringmq_listener="listen = \"127.0.0.1:$port\""
    if [ -n "$tls" ]; then
        mosquitto_tls="cafile $pki/ca.pem
certfile $pki/server.pem
keyfile $pki/server.key"
        ringmq_listener=""
    fi
    case "$name" in
        mosquitto)
            mosquitto_conf "$port" "$mosquitto_tls" > "$work/mosquitto.conf"
            broker_conf="$work/mosquitto.conf"
            broker_cmd="taskset -c $BROKER_CPUS $MOSQUITTO -c $broker_conf"
            ;;
        ringmq)
            cat > "$work/ringmq.toml" <<EOF
$ringmq_listener
shards = $RINGMQ_SHARDS
allow_anonymous = true
EOF
            ringmq_limits >> "$work/ringmq.toml"
            if [ -n "$tls" ]; then
                cat >> "$work/ringmq.toml" <<EOF

[[listener]]
bind = "127.0.0.1:$port"
protocol = "mqtt+tls"
certfile = "$pki/server.pem"
keyfile = "$pki/server.key"
EOF
            fi
            broker_conf="$work/ringmq.toml"
            broker_cmd="taskset -c $BROKER_CPUS $RINGMQ --config $broker_conf"
            ;;
        rumqttd)
            # rumqttd 0.20 has no worker-thread setting: a router thread plus one thread per
            # listener, all pinned to BROKER_CPUS by taskset. MQTT 5 is a separate listener
            # section, so the -v5 cases get a [v5.1] listener instead of [v4.1]. It has no
            # TCP_NODELAY setting and no persistence; accept throttling (next_connection_delay_ms)
            # is off; in-flight and the router's per-connection batch are raised.
            local section="v4"
            [ "$mqtt5" = 1 ] && section="v5"
            cat > "$work/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = $((connections * 2 + 1000))
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[$section.1]
name = "$section-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [$section.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 65535
    dynamic_filters = true
EOF
            broker_conf="$work/rumqttd.toml"
            broker_cmd="taskset -c $BROKER_CPUS $RUMQTTD --quiet --config $broker_conf"
            ;;
        flashmq)
            # No storage_dir: no persistence. FlashMQ has no TCP_NODELAY setting.
            cat > "$work/flashmq.conf" <<EOF
thread_count $RINGMQ_SHARDS
allow_anonymous true
quiet true
log_file $work/flashmq.log
max_qos_msg_pending_per_client 65535
max_qos_bytes_pending_per_client 268435456
client_max_write_buffer_size 268435456
rlimit_nofile $(ulimit -Hn | sed 's/unlimited/1048576/')
listen {
  protocol mqtt
  inet_protocol ip4
  inet4_bind_address 127.0.0.1
  port $port
}
EOF
            broker_conf="$work/flashmq.conf"
            broker_cmd="taskset -c $BROKER_CPUS $FLASHMQ --config-file $broker_conf"
            ;;
        *) log "unknown broker $name"; exit 2 ;;
    esac
    $broker_cmd > "$work/$name.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            wait "$broker_pid" 2>/dev/null || true
            return 1
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
# Nanoseconds the threads of process $1 have spent runnable but waiting for a CPU
# (/proc/PID/task/*/schedstat, 2nd field): on a shared machine, the time other jobs took from it.
# A process that has just exited has no task files: 0, not a failed pipe (set -e, pipefail would
# end the whole run without a word; CI did, at the end of a conn-idle run).
runq_ns() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{s += $2} END {print s + 0}'; }
# Clock ticks the hypervisor gave to other guests while this machine wanted its CPUs (steal).
steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }

# --- the matrix ------------------------------------------------------------------------------
# case_args CASE BROKER: the load generator's arguments for CASE run against BROKER.
case_args() {
    case "$1" in
        fanin-qos0)   echo "fanin --publishers $FANIN_PUBLISHERS --subscribers 1 --qos 0 --max --inflight 100" ;;
        pairs-qos0)   echo "pairs -n $PAIRS --qos 0 --max --inflight 100" ;;
        pairs-qos1)   echo "pairs -n $PAIRS --qos 1 --max --inflight 100" ;;
        fanout-qos0)  echo "fanout --publishers 1 --subscribers 100 --qos 0 --max --inflight 100" ;;
        latency-qos0) echo "pairs -n 100 --qos 0 --rate 20000" ;;
        conn-idle)    echo "conn -n $connections --subscribe --ramp 10000 --source 127.0.0.2-127.0.0.40" ;;
        pairs-rate-*) echo "pairs -n $PAIRS --qos 0 --rate ${1#pairs-rate-}" ;;
        pairs-load-*) echo "pairs -n $PAIRS --qos 0 --rate $(load_rate "${1#pairs-load-}" "${2:-}")" ;;
        # 16 clients reconnecting as fast as they get through; sources spread the ports that
        # closed connections hold in TIME_WAIT.
        handshake)    echo "handshake -n 16 --source 127.0.0.2-127.0.0.40" ;;
        *-v5)         echo "$(case_args "${1%-v5}" "${2:-}") --mqtt 5" ;;
        *-retain)     echo "$(case_args "${1%-retain}" "${2:-}") --retain" ;;
        *-tls)        echo "$(case_args "${1%-tls}" "${2:-}") --tls-ca $pki/ca.pem" ;;
        *) log "unknown case $1"; exit 2 ;;
    esac
}

# load_rate PCT BROKER: PCT % of BROKER's maximum rate from MAX_RATES (at least 1 msg/s).
load_rate() {
    local max
    max="$(echo ",${MAX_RATES:-}," | sed -n "s/.*,$2=\([0-9.]*\),.*/\1/p")"
    if [ -z "$max" ]; then
        log "pairs-load-$1 needs MAX_RATES=...,$2=MSGS_PER_SEC,... (bench/latency.sh sets it)"; exit 2
    fi
    python3 -c "print(max(1, int($max * $1 / 100)))"
}

date_tag="$(date -u +%Y-%m-%d-%H%M)"
host="$(hostname -s 2>/dev/null || hostname)"
IFS=',' read -r -a case_list <<< "$cases"
IFS=',' read -r -a broker_list <<< "$brokers"
for c in "${case_list[@]}"; do
    for b in "${broker_list[@]}"; do
        # load_rate runs in a subshell inside case_args: check it here, where exit stops us.
        case "$c" in pairs-load-*) load_rate "${c#pairs-load-}" "$b" > /dev/null ;; esac
        case_args "$c" "$b" > /dev/null
    done
done
case_dirs=()

for c in "${case_list[@]}"; do
    mqtt5=0; [[ "$c" == *-v5 ]] && mqtt5=1
    dir="$out_root/$date_tag-$host-$c"
    mkdir -p "$dir"
    case_dirs+=("$dir")
    : > "$dir/runs.jsonl"
    for round in $(seq 1 "$rounds"); do
        for b in "${broker_list[@]}"; do
            # TLS is set up for ringmq and mosquitto (bench/tls.sh's certificate) only.
            if [[ "$c" == *-tls && "$b" != ringmq && "$b" != mosquitto ]]; then
                [ "$round" != 1 ] || log "skipping $b in $c: its TLS listener is not set up here"
                continue
            fi
            start_broker "$b" "$([[ "$c" != *-tls ]] || echo tls)"
            run_dir="$dir/$b-r$round"
            ready="$work/ready"; rm -f "$ready"
            rss_before="$(rss_kb "$broker_pid")"
            loadavg_before="$(cut -d' ' -f1-3 /proc/loadavg)"
            sock_before="$(sockstat)"
            # shellcheck disable=SC2046
            lg_cmd="taskset -c $LOAD_CPUS $LOADGEN $(case_args "$c" "$b") --port $port \
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
            bq0=0; bq1=0; lq0=0; lq1=0; st0=0; st1=0
            while kill -0 "$lg_pid" 2>/dev/null; do
                now_us="${EPOCHREALTIME/./}"
                if [ -z "$t0" ] && [ -e "$ready" ]; then
                    t0="$now_us"; ticks0="$(cpu_ticks "$broker_pid")"
                    bq0="$(runq_ns "$broker_pid")"; lq0="$(runq_ns "$lg_pid")"; st0="$(steal_ticks)"
                    rss_held="$(rss_kb "$broker_pid")"; sock_held="$(sockstat)"
                elif [ -n "$t0" ] && [ -z "$t1" ] && [ $((now_us - t0)) -ge "$duration_us" ]; then
                    t1="$now_us"; ticks1="$(cpu_ticks "$broker_pid")"
                    bq1="$(runq_ns "$broker_pid")"; lq1="$(runq_ns "$lg_pid")"; st1="$(steal_ticks)"
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
            # The broker's last lines: ringmq's per-shard stop lines (mesh pushes, wakes, drops).
            tail -n 40 "$work/$b.log" > "$run_dir/broker-tail.log" 2>/dev/null || true
            python3 - "$dir/runs.jsonl" <<EOF
import json, sys
run = {
    "case": "$c", "broker": "$b", "round": $round, "dir": "$(basename "$run_dir")",
    "broker_command": "$broker_cmd", "loadgen_command": "$lg_cmd",
    "tls_key": "$([[ "$c" != *-tls ]] || echo "$TLS_KEY")",
    "broker_config": open("$broker_conf").read(),
    "broker_alive_after": bool($alive),
    "sample_secs": ($t1 - $t0) / 1e6,
    "loadavg_before": "$loadavg_before",
    "broker_cpu_secs": ($ticks1 - $ticks0) / $clk_tck,
    "broker_runq_wait_secs": max(0, $bq1 - $bq0) / 1e9,
    "loadgen_runq_wait_secs": max(0, $lq1 - $lq0) / 1e9,
    "steal_secs_all_cpus": max(0, $st1 - $st0) / $clk_tck,
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
    "rumqttd": out("$RUMQTTD --version") if "rumqttd" in "$brokers".split(",") else None,
    "flashmq": out("$FLASHMQ --version 2>&1 | head -1") if "flashmq" in "$brokers".split(",") else None,
}, open(sys.argv[1], "w"))
EOF
python3 "$here/report.py" --versions "$versions" --quick "$quick" \
    --broker-cpus "$BROKER_CPUS" --load-cpus "$LOAD_CPUS" --rounds "$rounds" \
    --loadgen "$LOADGEN" --readme "$([ "$quick" = 1 ] || echo "$out_root/README.md")" \
    "${case_dirs[@]}"
log "results in $out_root"
