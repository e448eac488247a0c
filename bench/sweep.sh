#!/usr/bin/env bash
# Open-loop rate sweep: where the cost per message and the latency tail come from, per rate.
#
# For each broker, started once (pinned to BROKER_CPUS, ringmq with /metrics), and each rate, one
# open-loop run of ringmq-loadgen (pairs, QoS 0, 16-byte payloads, pinned to LOAD_CPUS), and
# over its measured window (from --ready-file, --duration seconds):
#   - the broker's and the load generator's CPU time (/proc/PID/stat) per message,
#   - the broker's and the generator's context switches per message (/proc/PID/status): each
#     voluntary one is a sleep in io_uring_enter (or epoll_wait), i.e. one loop turn that found
#     nothing to do; fewer per message = more messages per turn,
#   - TCP segments sent per message (/proc/net/snmp OutSegs, the whole machine: on loopback
#     every segment is sent once; ~2 per message = one publish and one delivery each in its own
#     segment, no batching; other jobs on a shared machine add a little),
#   - ringmq only: the broker's own receive-to-send wait (ringmq_receive_to_send_seconds, from
#     the loop turn that reaped a message to its send's submission; p99 as the upper bound of
#     its log2 bucket),
# beside the generator's p50/p99/p99.9 and send lag p99 (how late it put messages out).
#
# With --windows W1,W2,... the points are closed-loop runs instead (--max --inflight W: at most
# W messages per publisher in flight): W = 1 is one message per segment, as an open-loop stream
# that the system keeps up with; its rate is what such a stream can sustain at most, and the
# CPU per message at each W shows what batching is worth, whatever else runs on the machine.
#
# Usage: bench/sweep.sh [--brokers ringmq,mosquitto] [--rates 20000,100000,...] [--windows 1,10]
#                       [--pairs N] [--duration S] [--out DIR]
#   --out DIR   writes DIR/sweep.jsonl (one line per point) and DIR/sweep.md (the table);
#               default: a temp folder. Prints the table.
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0); binaries from target/release
#   (build them first: cargo build --release -p ringmq -p ringmq-loadgen); LOADGEN=PATH runs
#   another load generator binary (e.g. a before/after pair).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

brokers="ringmq,mosquitto"
rates="20000,100000,200000,300000,500000,1000000,2500000"
pairs=100
duration=3
windows=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --brokers) brokers="$2"; shift ;;
        --rates) rates="$2"; shift ;;
        --windows) windows="$2"; shift ;;
        --pairs) pairs="$2"; shift ;;
        --duration) duration="$2"; shift ;;
        --out) out="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) log "unknown argument $1 (see --help)"; exit 2 ;;
    esac
    shift
done
positive_numbers --rates "$rates"
[ -z "$windows" ] || positive_numbers --windows "$windows"
positive_numbers --pairs "$pairs"
positive_numbers --duration "$duration"
need python3
need taskset util-linux
need curl
loadgen="${LOADGEN:-$root/target/release/ringmq-loadgen}"
ringmq="$root/target/release/ringmq"
[ -x "$loadgen" ] && [ -x "$ringmq" ] || { log "build first: cargo build --release -p ringmq -p ringmq-loadgen"; exit 1; }
make_work sweep
[ -n "$out" ] || out="$work/out"
mkdir -p "$out"
: > "$out/sweep.jsonl"
port=$((29600 + RANDOM % 300))
metrics_port=$((port + 1))

# Context switches of all of process $1's threads (all kinds; voluntary only).
ctx() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
voluntary() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }
# ns process $1's threads were runnable but had no CPU (other jobs on a shared machine).
runq_ns() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{s += $2} END {print s + 0}'; }
outsegs() { awk '/^Tcp:/ {n++} /^Tcp:/ && n == 2 {print $12}' /proc/net/snmp; }
metrics() {
    if [ "$1" = ringmq ]; then
        curl -s "http://127.0.0.1:$metrics_port/metrics" | grep '^ringmq_receive_to_send_seconds_bucket' || true
    fi
}

for b in ${brokers//,/ }; do
    port=$((port + 2)); metrics_port=$((port + 1))
    # Skip ports in use on this machine (other benchmarks, tests; the ephemeral range may cover them).
    while ss -tan | awk '{print $4}' | grep -qE ":($port|$metrics_port)\$"; do
        port=$((port + 2)); metrics_port=$((port + 1))
    done
    case "$b" in
        ringmq)
            cat > "$work/ringmq.toml" <<EOF
listen = "127.0.0.1:$port"
shards = 1
allow_anonymous = true
metrics_listen = "127.0.0.1:$metrics_port"
EOF
            ringmq_limits >> "$work/ringmq.toml"
            start_broker "$BROKER_CPUS" "$work/broker.log" "$ringmq" --config "$work/ringmq.toml"
            wait_listening "$work/broker.log" ;;
        mosquitto)
            need mosquitto
            mosquitto_conf "$port" > "$work/mosquitto.conf"
            start_broker "$BROKER_CPUS" "$work/broker.log" "$(command -v mosquitto)" -c "$work/mosquitto.conf"
            wait_port "$port" ;;
        *) log "unknown broker $b (ringmq or mosquitto)"; exit 2 ;;
    esac
    if [ -n "$windows" ]; then points="$(echo "$windows" | sed 's/\([0-9][0-9]*\)/w\1/g')"; else points="$rates"; fi
    for point in ${points//,/ }; do
        run="$out/$b-$point"
        ready="$work/ready"; rm -f "$ready"
        case "$point" in
            w*) load=(--max --inflight "${point#w}"); rate=0 ;;
            *) load=(--rate "$point"); rate="$point" ;;
        esac
        taskset -c "$LOAD_CPUS" "$loadgen" pairs -n "$pairs" --qos 0 "${load[@]}" --port "$port" \
            --warmup 1 --duration "$duration" --drain 2 --cpus "$LOAD_CPUS" --label "$b" \
            --out "$run" --ready-file "$ready" -q > "$work/lg.out" 2> "$work/lg.err" &
        lg=$!
        t0=""; t1=""
        while kill -0 "$lg" 2>/dev/null; do
            now="${EPOCHREALTIME/./}"
            if [ -z "$t0" ] && [ -e "$ready" ]; then
                t0="$now"; b0="$(cpu_ticks "$broker_pid")"; l0="$(cpu_ticks "$lg")"
                bc0="$(ctx "$broker_pid")"; bv0="$(voluntary "$broker_pid")"; lc0="$(ctx "$lg")"
                s0="$(outsegs)"; metrics "$b" > "$work/m0"
                bq0="$(runq_ns "$broker_pid")"; lq0="$(runq_ns "$lg")"
            elif [ -n "$t0" ] && [ -z "$t1" ] && [ $((now - t0)) -ge $((duration * 1000000)) ]; then
                t1="$now"; b1="$(cpu_ticks "$broker_pid")"; l1="$(cpu_ticks "$lg")"
                bc1="$(ctx "$broker_pid")"; bv1="$(voluntary "$broker_pid")"; lc1="$(ctx "$lg")"
                s1="$(outsegs)"; metrics "$b" > "$work/m1"
                bq1="$(runq_ns "$broker_pid")"; lq1="$(runq_ns "$lg")"
            fi
            sleep 0.02
        done
        wait "$lg" || { log "load generator failed:"; cat "$work/lg.err" >&2; exit 1; }
        [ -n "$t1" ] || { log "$b at $rate: the window was not sampled"; exit 1; }
        python3 - "$out/sweep.jsonl" "$run/summary.json" "$work/m0" "$work/m1" <<EOF
import json, os, sys
s = json.load(open(sys.argv[2]))
tck = os.sysconf("SC_CLK_TCK")
secs = ($t1 - $t0) / 1e6
msgs = max(1.0, s["msgs_in_per_sec"] * secs)  # messages through the broker in the window
def buckets(path):
    out = {}
    for line in open(path):
        le = line.split('le="')[1].split('"')[0]
        out[le] = out.get(le, 0) + float(line.split()[-1])
    return out
p99_r2s = None
m0, m1 = buckets(sys.argv[3]), buckets(sys.argv[4])
if m1:
    d = sorted(((float("inf") if k == "+Inf" else float(k)), m1[k] - m0.get(k, 0)) for k in m1)
    total = d[-1][1]
    if total > 0:
        p99_r2s = next(le for le, c in d if c >= 0.99 * total) * 1e6
row = {
    "broker": "$b", "rate": $rate, "window": s["inflight_window"], "pairs": $pairs, "secs": secs,
    "received_per_sec": s["msgs_in_per_sec"], "lost": s["lost"],
    "p50_us": s["latency"]["p50_us"], "p99_us": s["latency"]["p99_us"], "p99_9_us": s["latency"]["p99_9_us"],
    "send_lag_p99_us": s["send_lag"]["p99_us"],
    "broker_cpu_pct": 100 * ($b1 - $b0) / tck / secs,
    "loadgen_cpu_pct": 100 * ($l1 - $l0) / tck / secs,
    "broker_cpu_ns_per_msg": ($b1 - $b0) / tck * 1e9 / msgs,
    "loadgen_cpu_ns_per_msg": ($l1 - $l0) / tck * 1e9 / msgs,
    "broker_ctx_per_msg": ($bc1 - $bc0) / msgs, "broker_sleeps_per_sec": ($bv1 - $bv0) / secs,
    "loadgen_ctx_per_msg": ($lc1 - $lc0) / msgs,
    "tcp_segs_per_msg": ($s1 - $s0) / msgs,
    "broker_runq_wait_pct": 100 * ($bq1 - $bq0) / 1e9 / secs,
    "loadgen_runq_wait_pct": 100 * ($lq1 - $lq0) / 1e9 / secs,
    "broker_receive_to_send_p99_us": p99_r2s,
    "loadavg": open("/proc/loadavg").read().split()[:3],
}
open(sys.argv[1], "a").write(json.dumps(row) + "\n")
EOF
        log "$b at $point: $(tail -1 "$out/sweep.jsonl")"
    done
    stop_broker
done

python3 - "$out" <<'EOF'
import json, os, sys
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "sweep.jsonl"))]
def us(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
lines = ["| broker | load | received msgs/s | p50 | p99 | p99.9 | send lag p99 | broker CPU | broker ns/msg | "
         "broker sleeps/s | loadgen CPU | loadgen ns/msg | TCP segs/msg | broker receive-to-send p99 | "
         "run-queue wait broker / loadgen | load avg |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    load = f"closed loop, window {r['window']}" if r["window"] else f"open loop {r['rate']} msgs/s"
    lines.append(f"| {r['broker']} | {load} | {r['received_per_sec']:.0f} | {us(r['p50_us'])} | {us(r['p99_us'])} | "
                 f"{us(r['p99_9_us'])} | {us(r['send_lag_p99_us'])} | {r['broker_cpu_pct']:.0f} % | "
                 f"{r['broker_cpu_ns_per_msg']:.0f} | {r['broker_sleeps_per_sec']:.0f} | {r['loadgen_cpu_pct']:.0f} % | "
                 f"{r['loadgen_cpu_ns_per_msg']:.0f} | {r['tcp_segs_per_msg']:.2f} | "
                 f"{us(r['broker_receive_to_send_p99_us'])} | "
                 f"{r['broker_runq_wait_pct']:.0f} % / {r['loadgen_runq_wait_pct']:.0f} % | {' '.join(r['loadavg'])} |")
open(os.path.join(sys.argv[1], "sweep.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
