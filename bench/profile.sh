#!/usr/bin/env bash
# Where a message's CPU time goes, function by function, for two ringmq builds or two layouts
# of one: `perf record` samples the broker while ringmq-loadgen drives it, and each function's
# samples become CPU nanoseconds per received message (samples x sampling period / messages
# received in the sampled window). Differences of a few nanoseconds in one function show here
# when whole-broker CPU time (bench/ab.sh) moves by more between identical runs, and, unlike
# callgrind (bench/instructions.sh), it runs several io_uring shards and counts the kernel.
#
# Broker pinned to BROKER_CPU, ringmq-loadgen to LOAD_CPU, interleaved A B A B over ROUNDS
# rounds; each run lasts 6 s, sampled from 2 s to 6 s. Prints each side's total and the
# functions whose cost changed most, summed over the rounds; writes perf.data per run and
# the table to OUT (default /tmp/ringmq-profile).
#
# Usage: bench/profile.sh OLD_BINARY NEW_BINARY [ROUNDS] [-- LOADGEN CASE]
#   default case: fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100
#   e.g. what a forward to another shard costs, both shards sharing core 1:
#        ARGS_OLD="--shards 1" ARGS_NEW="--shards 2" bench/profile.sh target/release/ringmq target/release/ringmq 2
#        two builds, two shards each:
#        ARGS_OLD="--shards 2" ARGS_NEW="--shards 2" bench/profile.sh /tmp/old-ringmq target/release/ringmq 2
# Environment: BROKER_CPU (default 1), LOAD_CPU (default 0), ARGS_OLD and ARGS_NEW (extra
#   broker flags for each side), LOADGEN (default target/release/ringmq-loadgen), OUT,
#   FREQ (samples per second, default 2000), TOP (functions listed, default 25), PORT_BASE.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -ge 2 ] || { usage; exit 2; }
old="$1"; new="$2"; shift 2
rounds=2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rounds="$1"; shift; fi
positive_numbers ROUNDS "$rounds"
case_args=(fanin --publishers 8 --subscribers 1 --qos 0 --max --inflight 100)
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || { usage; exit 2; }
    shift
    [ $# -gt 0 ] && case_args=("$@")
fi
loadgen="${LOADGEN:-$root/target/release/ringmq-loadgen}"
broker_cpu="${BROKER_CPU:-1}"; load_cpu="${LOAD_CPU:-0}"; port="${PORT_BASE:-$((20000 + RANDOM % 20000))}"
args_old="${ARGS_OLD:-}"; args_new="${ARGS_NEW:-}"
freq="${FREQ:-2000}"; top="${TOP:-25}"; out="${OUT:-/tmp/ringmq-profile}"
positive_numbers FREQ "$freq"; positive_numbers TOP "$top"
for bin in "$old" "$new" "$loadgen"; do [ -x "$bin" ] || { log "$bin is missing"; exit 1; }; done
need python3
need taskset "taskset (util-linux)"
need perf "perf (Debian: linux-perf)"
make_work profile
mkdir -p "$out"
rm -f "$out"/*.data "$out"/*.msgs "$out"/table.md

log "case: ${case_args[*]}; broker on CPU $broker_cpu, load on CPU $load_cpu, $rounds round(s)"
for round in $(seq 1 "$rounds"); do
    for which in old new; do
        bin="$old"; args="$args_old"
        [ "$which" = new ] && { bin="$new"; args="$args_new"; }
        # shellcheck disable=SC2086
        start_on_free_port one_shard_conf "$broker_cpu" "$work/broker.log" "$bin" --config "$work/ringmq.toml" $args
        rm -rf "$work/out"
        taskset -c "$load_cpu" "$loadgen" "${case_args[@]}" --port "$port" --warmup 1 --duration 5 \
            --drain 1 --out "$work/out" -q > /dev/null 2>&1 &
        load_pid=$!
        sleep 2
        perf record -F "$freq" -p "$broker_pid" -o "$out/$which-$round.data" -- sleep 4 > /dev/null 2>&1
        wait "$load_pid" || { log "ringmq-loadgen failed ($which, round $round)"; exit 1; }
        still_running "$work/broker.log" "round $round ($which: $bin)"
        stop_broker
        # Messages in the 4 s window, at the rate measured over the run's 5 s.
        python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["msgs_in_per_sec"] * 4)' \
            "$work/out/summary.json" > "$out/$which-$round.msgs"
        log "round $round, $which: $(cut -d. -f1 "$out/$which-$round.msgs") messages sampled"
    done
done
python3 - "$out" "$rounds" "$freq" "$top" <<'PY' | tee "$out/table.md"
import collections, subprocess, sys
out, rounds, freq, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def side(which):
    samples, messages = collections.Counter(), 0.0
    for r in range(1, rounds + 1):
        messages += float(open(f"{out}/{which}-{r}.msgs").read())
        report = subprocess.run(
            ["perf", "report", "-i", f"{out}/{which}-{r}.data", "--no-children", "--sort", "sym",
             "--stdio", "-F", "sample,sym"], capture_output=True, text=True, check=True).stdout
        for line in report.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].isdigit():
                samples[parts[1].strip()] += int(parts[0])
    ns = 1e9 / freq / max(messages, 1.0)
    return {name: count * ns for name, count in samples.items()}

old, new = side("old"), side("new")
print(f"CPU ns per received message | old {sum(old.values()):.1f} | new {sum(new.values()):.1f}")
print()
print("old ns | new ns | new - old | function")
print("---|---|---|---")
names = sorted(set(old) | set(new), key=lambda n: -abs(new.get(n, 0) - old.get(n, 0)))
for name in names[:top]:
    a, b = old.get(name, 0.0), new.get(name, 0.0)
    print(f"{a:.1f} | {b:.1f} | {b - a:+.1f} | `{name[:100]}`")
PY
