#!/usr/bin/env bash
# Latency under load, in one run: p50 / p99 / p99.9 at 10 %, 50 % and 90 % of each broker's
# measured maximum rate, next to the machine's own floor with no broker at all.
#
#   1. floor: bench/floor.py, no broker and no ringmq code -- how late a thread on LOAD_CPUS wakes
#      from a timed sleep, and an open-loop TCP echo (client on LOAD_CPUS, echo on BROKER_CPUS)
#      at 20,000 messages/s, latency from the intended send time.
#   2. maximum: bench/compare.sh case pairs-qos0 (100 pairs, QoS 0, closed loop, window 100), one
#      round per broker; its median rate is that broker's maximum.
#   3. open loop: bench/compare.sh cases pairs-load-P (100 pairs, QoS 0, P % of the broker's own
#      maximum) and pairs-rate-20000 (the old latency-qos0 case, the same rate for every broker),
#      brokers interleaved, --rounds rounds. The load generator stamps every message with its
#      intended send time and records publish -> delivery in an HdrHistogram (no coordinated
#      omission); send_lag_p99 shows when the generator itself ran late.
#
# Writes DIR/ (default results/<date>-<time>-<host>-latency/): floor.json, max/ (the maximum
# runs), one compare.sh folder per open-loop case, and summary.md with the table. Prints the
# table.
#
# Usage: bench/latency.sh [--brokers ringmq,mosquitto,rumqttd,flashmq] [--points 10,50,90]
#                         [--rounds N] [--quick] [--out DIR] [--no-build]
#   --quick   short runs (compare.sh --quick), 1 round, 2 s floor, output to a temp folder
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0), RUMQTTD_BIN, FLASHMQ_BIN (as
#   compare.sh; peers that are not installed are skipped).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

brokers="ringmq,mosquitto,rumqttd,flashmq"
points="10,50,90"
rounds=2
quick=0
out=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --brokers) brokers="$2"; shift ;;
        --points) points="$2"; shift ;;
        --rounds) rounds="$2"; shift ;;
        --quick) quick=1 ;;
        --out) out="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) log "unknown argument $1 (see --help)"; exit 2 ;;
    esac
    shift
done
positive_numbers --rounds "$rounds"
positive_numbers --points "$points" "whole percentages, e.g. 10,50,90"
need python3
need taskset util-linux

host="$(hostname -s 2>/dev/null || hostname)"
if [ -z "$out" ]; then
    if [ "$quick" = 1 ]; then out="$(mktemp -d /tmp/ringmq-latency-quick.XXXXXX)"
    else out="$root/results/$(date -u +%Y-%m-%d-%H%M)-$host-latency"; fi
fi
mkdir -p "$out"
compare=("$here/compare.sh" --brokers "$brokers")
floor_secs=5
if [ "$quick" = 1 ]; then compare+=(--quick); rounds=1; floor_secs=2; fi
[ "$build" = 1 ] || compare+=(--no-build)

log "floor: no broker (bench/floor.py)"
python3 "$here/floor.py" --rate 20000 --seconds "$floor_secs" \
    --client-cpus "$LOAD_CPUS" --server-cpus "$BROKER_CPUS" > "$out/floor.json"

log "maximum rate per broker (pairs-qos0, closed loop)"
"${compare[@]}" --cases pairs-qos0 --rounds 1 --out "$out/max" > "$out/max.txt"
# The build, if any, is done: the next compare.sh runs need not repeat it.
[ "$build" = 0 ] || compare+=(--no-build)
max_rates="$(python3 - "$out/max" <<'EOF'
import glob, json, os, sys
run = json.load(open(sorted(glob.glob(os.path.join(sys.argv[1], "*-pairs-qos0", "run.json")))[-1]))
print(",".join(f"{b}={int(m['msgs_in_per_sec'])}" for b, m in run["medians"].items() if m.get("msgs_in_per_sec")))
EOF
)"
log "maximum rates: $max_rates"

cases="$(for p in ${points//,/ }; do printf 'pairs-load-%s,' "$p"; done)pairs-rate-20000"
log "open loop: $cases, $rounds round(s)"
MAX_RATES="$max_rates" "${compare[@]}" --cases "$cases" --rounds "$rounds" --out "$out" > "$out/open.txt"

python3 - "$out" "$max_rates" "$points" "$rounds" <<'EOF'
import glob, json, os, sys
out, max_rates, points, rounds = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
floor = json.load(open(os.path.join(out, "floor.json")))
maxes = dict(kv.split("=") for kv in max_rates.split(","))

def us(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"

def pct(v):
    return "-" if v is None else f"{v:.0f} %"

def rate(v):
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"

rows, machine = [], None
order = [f"pairs-load-{p}" for p in points] + ["pairs-rate-20000"]
for case in order:
    found = sorted(glob.glob(os.path.join(out, f"*-{case}", "run.json")))
    if not found:
        continue
    run = json.load(open(found[-1]))
    machine = run["machine"]
    link = os.path.basename(os.path.dirname(found[-1]))
    for b, m in run["medians"].items():
        target = run["commands"][b]["loadgen"].split("--rate ")[1].split()[0]
        point = f"{case.rsplit('-', 1)[1]} % of max" if "load" in case else "20,000 msgs/s"
        rows.append(f"| {b} | {point} | {rate(int(target))} | {rate(m['msgs_in_per_sec'])} | {us(m['p50_us'])} | "
                    f"{us(m['p99_us'])} | {us(m['p99_9_us'])} | {us(m['max_us'])} | {us(m['send_lag_p99_us'])} | "
                    f"{m['broker_cpu_pct']:.0f} % | {pct(m.get('broker_runq_wait_pct'))} / {pct(m.get('loadgen_runq_wait_pct'))} | "
                    f"{m['lost']:.0f} | [{link}]({link}/summary.md) |")
lines = ["# Latency under load", ""]
if machine:
    lines += [f"Machine: {machine['cpu_model']}, {machine['cpus_online']} CPUs, kernel {machine['kernel']} "
              f"(shared with other jobs: load average at the end {' '.join(machine['loadavg_at_end'] or [])}); "
              f"broker on cores {machine['broker_cpus']}, load on {machine['load_cpus']}; commit `{machine['commit'][:12]}`.", ""]
lines += ["Maximum rate (pairs-qos0: 100 pairs, QoS 0, closed loop, window 100, one round): "
          + ", ".join(f"{b} {rate(int(v))} msgs/s" for b, v in maxes.items()) + " ([max/](max/)).", "",
          f"Open loop, 100 pairs, QoS 0, 16-byte payloads, medians of {rounds} round(s), brokers interleaved. "
          "Latency is publish -> delivery from the intended send time (HdrHistogram; a late send counts "
          "its lateness: no coordinated omission). send lag p99 is how late the load generator itself "
          "put messages out: when it is near the latency, the generator, not the broker, set the figure.", "",
          "Run-queue waits: share of the window the broker's / the generator's threads were runnable but "
          "had no CPU (other jobs on this shared machine).", "",
          "| broker | point | target rate | received | p50 | p99 | p99.9 | max | send lag p99 | broker CPU | run-queue wait broker / generator | lost | run |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"] + rows
lines += ["", f"Floor with no broker (`bench/floor.py --rate {floor['rate_per_sec']} --seconds {floor['seconds']}`, "
          f"client on cores {floor['client_cpus']}, echo on {floor['server_cpus']}, python: an upper bound):", "",
          "| probe | samples | p50 | p90 | p99 | p99.9 | max |", "|---|---|---|---|---|---|---|"]
for key, name in (("timer_wake_late", "timed sleep: wake-up lateness"), ("tcp_echo", "TCP echo, open loop")):
    f = floor.get(key)
    if f and f.get("count"):
        lines.append(f"| {name} | {f['count']} | {us(f['p50_us'])} | {us(f['p90_us'])} | {us(f['p99_us'])} | "
                     f"{us(f['p99_9_us'])} | {us(f['max_us'])} |")
lines.append("")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
print("\n".join(lines))
EOF
log "results in $out"
