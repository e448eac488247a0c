#!/usr/bin/env bash
# Per-core scaling of ringmq, one command (written for the 16-core machine): 1, 2, 4 and 8 shards,
# shard i pinned to the i-th core of BROKER_CPUS (default 0-7), the load generator with one
# thread per core of LOAD_CPUS (default 8-15), cases pairs QoS 0 and fan-in QoS 0 from
# bench/compare.sh, and scaling efficiency = rate(S) / (S x rate(1)) for each S (goal at 8
# shards: >= 0.8).
#
# With fewer broker cores than shards (this 2-core VM) the extra shards share the listed cores:
# that is a smoke run of the script, not a scaling figure, and the summary says so.
#
# Writes DIR/ (default results/<date>-<time>-<host>-scaling/): shards-S/ (compare.sh's folders
# for S shards) and summary.md with the table; prints the table.
#
# Usage: bench/scaling.sh [--shards 1,2,4,8] [--cases pairs-qos0,fanin-qos0] [--rounds N]
#                         [--quick] [--out DIR] [--no-build]
#   --quick   compare.sh --quick (2 s per run, 1 round), output to a temp folder
# Environment: BROKER_CPUS (default 0-7), LOAD_CPUS (default 8-15), PAIRS (default 256),
#   FANIN_PUBLISHERS (default 64): the 16-core machine's loads in shared BENCHMARKING.md.
set -euo pipefail
BROKER_CPUS="${BROKER_CPUS:-0-7}"
LOAD_CPUS="${LOAD_CPUS:-8-15}"
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

shards_list="1,2,4,8"
cases="pairs-qos0,fanin-qos0"
rounds=3
quick=0
out=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --shards) shards_list="$2"; shift ;;
        --cases) cases="$2"; shift ;;
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
positive_numbers --shards "$shards_list" "positive whole numbers, e.g. 1,2,4,8"
need python3
need taskset util-linux
export PAIRS="${PAIRS:-256}" FANIN_PUBLISHERS="${FANIN_PUBLISHERS:-64}"

# The broker cores, one per line, in the order given.
mapfile -t cores < <(python3 -c "
import sys
for part in sys.argv[1].split(','):
    lo, _, hi = part.partition('-')
    for c in range(int(lo), int(hi or lo) + 1):
        print(c)" "$BROKER_CPUS")

host="$(hostname -s 2>/dev/null || hostname)"
if [ -z "$out" ]; then
    if [ "$quick" = 1 ]; then out="$(mktemp -d /tmp/ringmq-scaling-quick.XXXXXX)"
    else out="$root/results/$(date -u +%Y-%m-%d-%H%M)-$host-scaling"; fi
fi
mkdir -p "$out"
compare=("$here/compare.sh" --brokers ringmq --cases "$cases" --rounds "$rounds")
[ "$quick" = 1 ] && compare+=(--quick)
[ "$build" = 1 ] || compare+=(--no-build)

shared=0
for s in ${shards_list//,/ }; do
    if [ "$s" -le "${#cores[@]}" ]; then
        cpus="$(IFS=','; echo "${cores[*]:0:$s}")"
    else
        cpus="$BROKER_CPUS"; shared=1
        log "$s shards on ${#cores[@]} core(s) $BROKER_CPUS: they share cores (a smoke run, not a scaling figure)"
    fi
    log "$s shard(s) on cores $cpus, load on $LOAD_CPUS"
    BROKER_CPUS="$cpus" RINGMQ_SHARDS="$s" "${compare[@]}" --out "$out/shards-$s" > "$out/shards-$s.txt"
    # Built once is enough.
    [ "$build" = 0 ] || { compare+=(--no-build); build=0; }
done

python3 - "$out" "$shards_list" "$cases" "$shared" "$rounds" "$LOAD_CPUS" <<'EOF'
import glob, json, os, sys
out, shards, cases, shared, rounds, load_cpus = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3].split(","), sys.argv[4] == "1", sys.argv[5], sys.argv[6]
rate = {}
machine = None
for s in shards:
    for c in cases:
        found = sorted(glob.glob(os.path.join(out, f"shards-{s}", f"*-{c}", "run.json")))
        if not found:
            continue
        run = json.load(open(found[-1]))
        machine = run["machine"]
        m = run["medians"]["ringmq"]
        rate[(s, c)] = (m["msgs_in_per_sec"], m["broker_cpu_pct"], m["loadgen_cpu_pct"],
                        os.path.relpath(os.path.dirname(found[-1]), out), run["commands"]["ringmq"]["loadgen"])

def fmt(v):
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"

lines = ["# Scaling: ringmq shards, one core each", ""]
if shared:
    lines += ["**Smoke run: more shards than broker cores, so shards shared cores. Not a scaling figure.**", ""]
if machine:
    lines += [f"Machine: {machine['cpu_model']}, {machine['cpus_online']} CPUs, kernel {machine['kernel']}; "
              f"load generator on cores {load_cpus}; commit `{machine['commit'][:12]}`; medians of {rounds} round(s).", ""]
lines += ["| case | shards | broker cores | msgs/s received | efficiency rate(S) / (S x rate(1)) | broker CPU | load CPU | run |",
          "|---|---|---|---|---|---|---|---|"]
for c in cases:
    base = rate.get((1, c))
    for s in shards:
        r = rate.get((s, c))
        if not r:
            continue
        eff = f"{r[0] / (s * base[0]):.2f}" if base and base[0] else "-"
        run = json.load(open(os.path.join(out, r[3], "run.json")))
        cores = run["machine"]["broker_cpus"]
        lines.append(f"| {c} | {s} | {cores} | {fmt(r[0])} | {eff} | {r[1]:.0f} % | {r[2]:.0f} % | [{r[3]}]({r[3]}/summary.md) |")
lines += ["", "Load commands (1 shard): " + "; ".join(f"`{rate[(shards[0], c)][4]}`" for c in cases if (shards[0], c) in rate), ""]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
print("\n".join(lines))
EOF
log "results in $out"
