#!/usr/bin/env bash
# Latency under load, in one run: p50 / p99 / p99.9 at 10 %, 50 % and 90 % of each broker's
# sustainable open-loop maximum rate, next to the machine's own floor with no broker at all.
#
#   1. floor: bench/floor.py, no broker and no ringmq code -- how late a thread on LOAD_CPUS wakes
#      from a timed sleep, and an open-loop TCP echo (client on LOAD_CPUS, echo on BROKER_CPUS)
#      at 20,000 messages/s, latency from the intended send time.
#   2. closed-loop maximum: bench/compare.sh case pairs-qos0 (100 pairs, QoS 0, closed loop,
#      window 100), one round per broker. With 10,000 messages in flight the clients and the
#      broker move dozens of messages per send and per recv; an open-loop stream at the same
#      rate puts about one message in each TCP segment and costs both sides several times more
#      CPU per message (results/2026-12-04-vm-latency-2/), so this is NOT a rate an open-loop
#      stream can sustain: on the 2-core VM 10 % of it already loaded both cores.
#   3. sustainable open-loop maximum: short open-loop runs (compare.sh --quick, 1.5 s each,
#      cases pairs-load-P) up a ladder of --ladder percentages of the closed-loop maximum; the
#      highest rung that kept up is the broker's sustainable maximum. Kept up = received at
#      least 99 % of the target rate, the generator's send lag p99 <= --keep-up-lag-ms (default
#      2 ms: it sent on time; on the VM a timed wake-up alone is late by ms at p99.9) and
#      latency p99 <= --keep-up-p99-ms (default 5 ms, a few times the machine's floor), in
#      any of --search-rounds rounds (another job's stall on a shared machine can only fail a
#      round, never pass one).
#   4. open loop: bench/compare.sh cases pairs-load-P (100 pairs, QoS 0, P % of the broker's own
#      sustainable maximum) and pairs-rate-20000 (the old latency-qos0 case, the same rate for
#      every broker), brokers interleaved, --rounds rounds. The load generator stamps every
#      message with its intended send time and records publish -> delivery in an HdrHistogram
#      (no coordinated omission); send_lag_p99 shows when the generator itself ran late.
#      --basis closed takes the points from the closed-loop maximum instead (the old table).
#
# Writes DIR/ (default results/<date>-<time>-<host>-latency/): floor.json, max/ (the
# closed-loop runs), search/ (the ladder), one compare.sh folder per open-loop case, and
# summary.md with the tables (points, ladder, floor). Prints them.
#
# Usage: bench/latency.sh [--brokers ringmq,mosquitto,rumqttd,flashmq] [--points 10,50,90]
#                         [--rounds N] [--quick] [--out DIR] [--no-build]
#                         [--ladder 1,2,3,5,7,10,15,20,30,50,70,90] [--keep-up-p99-ms 5]
#                         [--keep-up-lag-ms 2]
#                         [--search-rounds 2] [--basis sustainable|closed]
#   --quick   short runs (compare.sh --quick), 1 round, 2 s floor, a short ladder (1,5,20,50)
#             searched once, output to a temp folder
#   A broker with no rung kept up (a busy machine) puts every broker's points on the
#   closed-loop maximum (--basis closed), said in the log and the summary.
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
ladder=""
keep_up_p99_ms=5
keep_up_lag_ms=2
search_rounds=""
basis=sustainable
while [ $# -gt 0 ]; do
    case "$1" in
        --brokers) brokers="$2"; shift ;;
        --points) points="$2"; shift ;;
        --rounds) rounds="$2"; shift ;;
        --quick) quick=1 ;;
        --out) out="$2"; shift ;;
        --no-build) build=0 ;;
        --ladder) ladder="$2"; shift ;;
        --keep-up-p99-ms) keep_up_p99_ms="$2"; shift ;;
        --keep-up-lag-ms) keep_up_lag_ms="$2"; shift ;;
        --basis) basis="$2"; shift ;;
        --search-rounds) search_rounds="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) log "unknown argument $1 (see --help)"; exit 2 ;;
    esac
    shift
done
positive_numbers --rounds "$rounds"
positive_numbers --points "$points" "whole percentages, e.g. 10,50,90"
# --quick (the CI dry run): a short ladder, one round.
[ -n "$ladder" ] || { if [ "$quick" = 1 ]; then ladder="1,5,20,50"; else ladder="1,2,3,5,7,10,15,20,30,50,70,90"; fi; }
[ -n "$search_rounds" ] || { if [ "$quick" = 1 ]; then search_rounds=1; else search_rounds=2; fi; }
positive_numbers --ladder "$ladder" "whole percentages, e.g. 1,2,5,10,20,50"
positive_numbers --keep-up-p99-ms "$keep_up_p99_ms"
positive_numbers --keep-up-lag-ms "$keep_up_lag_ms"
positive_numbers --search-rounds "$search_rounds"
case "$basis" in sustainable|closed) ;; *) log "--basis is sustainable or closed"; exit 2 ;; esac
need python3
need taskset util-linux

host="$(hostname -s 2>/dev/null || hostname)"
if [ -z "$out" ]; then
    if [ "$quick" = 1 ]; then out="$(mktemp -d /tmp/ringmq-latency-quick.XXXXXX)"
    else out="$root/results/$(date -u +%Y-%m-%d-%H%M)-$host-latency"; fi
fi
mkdir -p "$out"
compare=("$here/compare.sh")
floor_secs=5
if [ "$quick" = 1 ]; then compare+=(--quick); rounds=1; floor_secs=2; fi
[ "$build" = 1 ] || compare+=(--no-build)

log "floor: no broker (bench/floor.py)"
python3 "$here/floor.py" --rate 20000 --seconds "$floor_secs" \
    --client-cpus "$LOAD_CPUS" --server-cpus "$BROKER_CPUS" > "$out/floor.json"

log "maximum rate per broker (pairs-qos0, closed loop)"
"${compare[@]}" --brokers "$brokers" --cases pairs-qos0 --rounds 1 --out "$out/max" > "$out/max.txt"
# The build, if any, is done: the next compare.sh runs need not repeat it.
[ "$build" = 0 ] || compare+=(--no-build)
max_rates="$(python3 - "$out/max" <<'EOF'
import glob, json, os, sys
run = json.load(open(sorted(glob.glob(os.path.join(sys.argv[1], "*-pairs-qos0", "run.json")))[-1]))
print(",".join(f"{b}={int(m['msgs_in_per_sec'])}" for b, m in run["medians"].items() if m.get("msgs_in_per_sec")))
EOF
)"
log "closed-loop maximum rates: $max_rates"

log "sustainable open-loop maximum: ladder $ladder % of the closed-loop maximum (short runs)"
brokers_run="$(echo "$max_rates" | sed 's/=[0-9]*//g')"
MAX_RATES="$max_rates" "$here/compare.sh" --brokers "$brokers_run" --quick --no-build \
    --rounds "$search_rounds" \
    --out "$out/search" --cases "$(echo "$ladder" | sed 's/\([0-9][0-9]*\)/pairs-load-\1/g')" \
    > "$out/search.txt"
# Judged per round (summary.json of each run): a rung is kept up if any round kept up. Noise
# from other jobs on a shared machine can only make a round fail (a stall), never pass.
sustained="$(python3 - "$out/search" "$keep_up_p99_ms" "$keep_up_lag_ms" <<'EOF'
import glob, json, os, sys
search, keep_up_ms, lag_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows, best = [], {}
for case_dir in glob.glob(os.path.join(search, "*-pairs-load-*")):
    pct = int(case_dir.rsplit("-", 1)[1])
    runs = {}
    for line in open(os.path.join(case_dir, "runs.jsonl")):
        r = json.loads(line)
        s = json.load(open(os.path.join(case_dir, r["dir"], "summary.json")))
        target = s["rate_target_per_sec"]
        kept = (s["msgs_in_per_sec"] >= 0.99 * target and s["send_lag"]["p99_us"] <= lag_ms * 1000
                and s["latency"]["p99_us"] <= keep_up_ms * 1000)
        row = {"broker": r["broker"], "pct_of_closed_max": pct, "round": r["round"], "target": target,
               "received": s["msgs_in_per_sec"], "p50_us": s["latency"]["p50_us"],
               "p99_us": s["latency"]["p99_us"], "send_lag_p99_us": s["send_lag"]["p99_us"],
               "broker_cpu_pct": r["broker_cpu_pct"],
               "loadgen_cpu_pct": 100 * s["loadgen_cpu_secs"] / s["wall_secs"],
               "runq_wait_pct": [100 * r["broker_runq_wait_secs"] / r["sample_secs"],
                                 100 * r["loadgen_runq_wait_secs"] / r["sample_secs"]],
               "kept_up": kept}
        # The round shown: the first that kept up, else the one with the lowest p99.
        old = runs.get(r["broker"])
        if old is None or (kept and not old["kept_up"]) or (kept == old["kept_up"] and row["p99_us"] < old["p99_us"]):
            runs[r["broker"]] = row
    for b, row in runs.items():
        rows.append(row)
        if row["kept_up"]:
            best[b] = max(best.get(b, 0), row["target"])
json.dump(sorted(rows, key=lambda r: (r["broker"], r["pct_of_closed_max"])),
          open(os.path.join(search, "ladder.json"), "w"), indent=1)
print(",".join(f"{b}={r}" for b, r in best.items()))
EOF
)"
log "sustainable open-loop maximum rates: ${sustained:-none kept up}"
if [ "$basis" = sustainable ] && [ "$(echo "$sustained" | tr ',' '\n' | grep -c .)" != "$(echo "$max_rates" | tr ',' '\n' | grep -c .)" ]; then
    # A busy machine (or too high a ladder) can leave a broker with no rung kept up: rather than
    # a table without it, every broker's points come from the closed-loop maximum, and the
    # summary says so.
    log "not every broker kept up at some rung (${sustained:-none did}): points from the closed-loop maximum"
    basis=closed
fi
if [ "$basis" = sustainable ]; then point_rates="$sustained"; else point_rates="$max_rates"; fi

cases="$(for p in ${points//,/ }; do printf 'pairs-load-%s,' "$p"; done)pairs-rate-20000"
log "open loop: $cases of the $basis maximum, $rounds round(s)"
# A broker that kept up at no rung has no sustainable maximum and no points.
MAX_RATES="$point_rates" "${compare[@]}" --brokers "$(echo "$point_rates" | sed 's/=[0-9]*//g')" \
    --cases "$cases" --rounds "$rounds" --out "$out" > "$out/open.txt"

python3 - "$out" "$max_rates" "$points" "$rounds" "$sustained" "$basis" "$keep_up_p99_ms" "$keep_up_lag_ms" <<'EOF'
import glob, json, os, sys
out, max_rates, points, rounds = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
sustained, basis, keep_up_ms, lag_ms = sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
floor = json.load(open(os.path.join(out, "floor.json")))
maxes = dict(kv.split("=") for kv in max_rates.split(","))
sus = dict(kv.split("=") for kv in sustained.split(",")) if sustained else {}

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
        point = f"{case.rsplit('-', 1)[1]} % of {basis} max" if "load" in case else "20,000 msgs/s"
        rows.append(f"| {b} | {point} | {rate(int(target))} | {rate(m['msgs_in_per_sec'])} | {us(m['p50_us'])} | "
                    f"{us(m['p99_us'])} | {us(m['p99_9_us'])} | {us(m['max_us'])} | {us(m['send_lag_p99_us'])} | "
                    f"{m['broker_cpu_pct']:.0f} % | {m['broker_cpu_ns_per_msg_in']:.0f} | {m['loadgen_cpu_pct']:.0f} % | "
                    f"{pct(m.get('broker_runq_wait_pct'))} / {pct(m.get('loadgen_runq_wait_pct'))} | "
                    f"{m['lost']:.0f} | [{link}]({link}/summary.md) |")
lines = ["# Latency under load", ""]
if machine:
    lines += [f"Machine: {machine['cpu_model']}, {machine['cpus_online']} CPUs, kernel {machine['kernel']} "
              f"(shared with other jobs: load average at the end {' '.join(machine['loadavg_at_end'] or [])}); "
              f"broker on cores {machine['broker_cpus']}, load on {machine['load_cpus']}; commit `{machine['commit'][:12]}`.", ""]
lines += ["Closed-loop maximum (pairs-qos0: 100 pairs, QoS 0, closed loop, window 100, one round): "
          + ", ".join(f"{b} {rate(int(v))} msgs/s" for b, v in maxes.items()) + " ([max/](max/)).", "",
          "Sustainable open-loop maximum (the highest rung of the ladder below that kept up: received "
          f">= 99 % of the target, send lag p99 <= {lag_ms} ms, p99 <= {keep_up_ms} ms, in any round): "
          + (", ".join(f"{b} {rate(int(v))} msgs/s ({100 * int(v) / int(maxes[b]):.0f} % of its closed-loop maximum)"
                       for b, v in sus.items()) or "none") + f". The points below are of the {basis} maximum.", "",
          f"Open loop, 100 pairs, QoS 0, 16-byte payloads, medians of {rounds} round(s), brokers interleaved. "
          "Latency is publish -> delivery from the intended send time (HdrHistogram; a late send counts "
          "its lateness: no coordinated omission). send lag p99 is how late the load generator itself "
          "put messages out: when it is near the latency, the generator, not the broker, set the figure.", "",
          "Run-queue waits: share of the window the broker's / the generator's threads were runnable but "
          "had no CPU (other jobs on this shared machine).", "",
          "Broker ns/msg: the broker's CPU time per message (sampled over the window); load generator CPU: its "
          "CPU time over its whole run (one core).", "",
          "| broker | point | target rate | received | p50 | p99 | p99.9 | max | send lag p99 | broker CPU | broker ns/msg | load generator CPU | run-queue wait broker / generator | lost | run |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"] + rows
ladder_path = os.path.join(out, "search", "ladder.json")
ladder = json.load(open(ladder_path)) if os.path.exists(ladder_path) else []
if ladder:
    lines += ["", "Ladder (open loop, 1.5 s each after 0.3 s warm-up; per rung the round that kept up, else "
              "the one with the lowest p99; [search/](search/)):", "",
              "| broker | % of closed-loop max | target | received | p50 | p99 | send lag p99 | broker CPU | "
              "load generator CPU | run-queue wait broker / generator | kept up |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ladder:
        lines.append(f"| {r['broker']} | {r['pct_of_closed_max']} % | {rate(r['target'])} | {rate(r['received'])} | "
                     f"{us(r['p50_us'])} | {us(r['p99_us'])} | {us(r['send_lag_p99_us'])} | "
                     f"{r['broker_cpu_pct']:.0f} % | {r['loadgen_cpu_pct']:.0f} % | "
                     f"{r['runq_wait_pct'][0]:.0f} % / {r['runq_wait_pct'][1]:.0f} % | {'yes' if r['kept_up'] else 'no'} |")
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
