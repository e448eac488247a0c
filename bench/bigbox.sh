#!/usr/bin/env bash
# The figures only a 16-core machine can give, in one command: what the machine is, per-core
# scaling (bench/scaling.sh: 1, 2, 4, 8 shards on BROKER_CPUS, the load generator on LOAD_CPUS,
# pairs QoS 0 and fan-in QoS 0) and idle connections toward a million in one broker process
# (bench/idle.sh: 8 shards, rings per shard sized to the open-file limit), and where perf is on
# PATH (bench/perf-bundle.sh packs one to carry), where the CPU goes on 1 shard against 8, function
# by function (bench/profile.sh, pairs QoS 0: what grows with the shards). Each step runs under
# its own time limit and the next one runs whatever the last one did, so one failure still leaves
# the other figures.
#
# Uses the release binaries in target/release (built here with cargo if cargo is there and
# --no-build is not given); on a machine without Rust, copy them there first. No package is
# installed: it needs bash, python3 and taskset.
#
# Writes DIR/ (default results/<date>-<time>-<host>-bigbox/): machine.txt, scaling/ (scaling.sh's
# folder), profile/ (profile.sh's table and perf.data files), idle/ (idle.sh's), steps.log and
# summary.md (the scaling table, the profile's table and the idle summary).
#
# Usage: bench/bigbox.sh [--out DIR] [--connections N] [--rate C] [--rounds N] [--no-build]
#                        [--skip-scaling] [--skip-profile] [--skip-idle]
#   --connections N   idle connections (default 1000000)
#   --rate C          connections opened per second (default 50000)
#   --rounds N        scaling.sh rounds per case (default 1: 8 runs of about 13 s)
# Environment: BROKER_CPUS (default 0-7), LOAD_CPUS (default 8-15), SCALING_SHARDS (default
#   1,2,4,8), IDLE_SHARDS (default 8), PROFILE_SHARDS (default 8), SCALING_LIMIT, PROFILE_LIMIT
#   and IDLE_LIMIT (seconds each step may take, default 240, 90 and 180), RINGMQ_COMMIT (the commit to report where the tree has no .git),
#   OLD_RINGMQ (another build of the broker: its pairs QoS 0 and fan-in on all of BROKER_CPUS
#   too, right after the scaling step, in old/, for an A/B on the same machine; OLD_COMMIT
#   names it).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
export BROKER_CPUS="${BROKER_CPUS:-0-7}" LOAD_CPUS="${LOAD_CPUS:-8-15}"

out=""
connections=1000000
rate=50000
rounds=1
build=1
scaling=1
profile=1
idle=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift ;;
        --connections) connections="$2"; shift ;;
        --rate) rate="$2"; shift ;;
        --rounds) rounds="$2"; shift ;;
        --no-build) build=0 ;;
        --skip-scaling) scaling=0 ;;
        --skip-profile) profile=0 ;;
        --skip-idle) idle=0 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "bigbox.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "bigbox.sh: $*" >&2; }
for tool in python3 taskset timeout; do
    command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done
host="$(hostname -s 2>/dev/null || hostname)"
[ -n "$out" ] || out="$root/results/$(date -u +%Y-%m-%d-%H%M)-$host-bigbox"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ "$build" = 1 ] && command -v cargo >/dev/null; then
    log "building ringmq and ringmq-loadgen (release)"
    cargo build --release -p ringmq -p ringmq-loadgen >&2 || exit 1
fi
for bin in target/release/ringmq target/release/ringmq-loadgen; do
    [ -x "$bin" ] || { log "$bin is missing: build it (cargo build --release) or copy it there"; exit 1; }
done
if [ -z "${RINGMQ_COMMIT:-}" ] && git rev-parse HEAD >/dev/null 2>&1; then
    RINGMQ_COMMIT="$(git rev-parse HEAD)"
    git diff --quiet HEAD -- src loadgen Cargo.toml Cargo.lock || RINGMQ_COMMIT="$RINGMQ_COMMIT-dirty"
fi
export RINGMQ_COMMIT="${RINGMQ_COMMIT:-unknown}"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $RINGMQ_COMMIT"
    echo "kernel: $(uname -r)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) online"
    echo "memory: $(awk '/^MemTotal/ {print $2 " kB"}' /proc/meminfo)"
    echo "open-file limit: soft $(ulimit -Sn), hard $(ulimit -Hn)"
    echo "io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo absent)"
    echo "broker cores: $BROKER_CPUS; load cores: $LOAD_CPUS"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    # Which cores share a physical core (hyperthreads) or a socket: whether the broker's cores
    # and the load generator's compete below the OS.
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
        [ -r "$c/topology/thread_siblings_list" ] || continue
        echo "${c##*/}: siblings $(cat "$c/topology/thread_siblings_list"), core $(cat "$c/topology/core_id" 2>/dev/null), socket $(cat "$c/topology/physical_package_id" 2>/dev/null)"
    done
} | tee "$out/machine.txt" >&2

status=0
step() {
    local name="$1" limit="$2" rc=0
    shift 2
    log "step $name (limit ${limit} s): $*"
    local t0="${EPOCHREALTIME/./}"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.txt" 2>&1 || rc=$?
    local secs=$(((${EPOCHREALTIME/./} - t0) / 1000000))
    echo "$name: exit $rc after $secs s: $*" >> "$out/steps.log"
    log "step $name: exit $rc after $secs s"
    [ "$rc" = 0 ] || { status=1; tail -20 "$out/$name.txt" >&2; }
}
if [ "$scaling" = 1 ]; then
    step scaling "${SCALING_LIMIT:-240}" "$here/scaling.sh" --no-build --rounds "$rounds" \
        --shards "${SCALING_SHARDS:-1,2,4,8}" --cases pairs-qos0,fanin-qos0 --out "$out/scaling"
fi
if [ "$profile" = 1 ] && command -v perf >/dev/null; then
    # One round: 1 shard, then PROFILE_SHARDS, 6 s each, the load as scaling.sh's pairs.
    BROKER_CPU="$BROKER_CPUS" LOAD_CPU="$LOAD_CPUS" ARGS_OLD="--shards 1" \
        ARGS_NEW="--shards ${PROFILE_SHARDS:-8}" OUT="$out/profile" TOP=40 \
        step profile "${PROFILE_LIMIT:-90}" "$here/profile.sh" target/release/ringmq \
        target/release/ringmq 1 -- pairs -n "${PAIRS:-256}" --qos 0 --max --inflight 100 \
        --cpus "$LOAD_CPUS"
elif [ "$profile" = 1 ]; then
    log "no perf on PATH: profile step skipped (bench/perf-bundle.sh packs one to carry)"
fi
if [ -n "${OLD_RINGMQ:-}" ]; then
    RINGMQ_BIN="$OLD_RINGMQ" RINGMQ_COMMIT="${OLD_COMMIT:-unknown}" \
        PAIRS="${PAIRS:-256}" FANIN_PUBLISHERS="${FANIN_PUBLISHERS:-64}" \
        step old "${SCALING_LIMIT:-240}" "$here/compare.sh" --no-build --brokers ringmq \
        --cases pairs-qos0,fanin-qos0 --rounds "$rounds" --out "$out/old"
fi
if [ "$idle" = 1 ]; then
    # A connection may wait for its SUBACK as long as the whole ramp takes: a slower ramp than
    # asked still ends with every connection counted.
    CONNECT_TIMEOUT=$((connections / rate + 30)) \
        step idle "${IDLE_LIMIT:-180}" "$here/idle.sh" --no-build --shards "${IDLE_SHARDS:-8}" \
        --rings-per-shard auto --connections "$connections" --rate "$rate" --out "$out/idle"
fi

{
    echo "# 16-core figures (bench/bigbox.sh)"
    echo
    sed 's/^/    /' "$out/machine.txt"
    echo
    echo "Steps:"
    echo
    sed 's/^/    /' "$out/steps.log" 2>/dev/null
    if [ -f "$out/scaling/summary.md" ]; then echo; sed 's/^# /## /' "$out/scaling/summary.md"; fi
    if [ -f "$out/profile/table.md" ]; then
        echo; echo "## Where the CPU goes: 1 shard (old) against ${PROFILE_SHARDS:-8} (new), pairs QoS 0"; echo
        cat "$out/profile/table.md"
    fi
    if [ -f "$out/old.txt" ]; then
        echo; echo "## The other build (OLD_RINGMQ, commit ${OLD_COMMIT:-unknown}) on cores $BROKER_CPUS"; echo
        grep -E '^\| (fanin|pairs)-qos0 \| (msgs_in_per_sec|broker_cpu_pct|broker_cpu_ns_per_msg_in) ' "$out/old.txt"
    fi
    if [ -f "$out/idle.txt" ]; then echo; echo "## Idle connections"; echo; grep -A8 '^== idle' "$out/idle.txt" | sed 's/^/    /'; fi
} > "$out/summary.md"
cat "$out/summary.md"
log "results in $out"
exit "$status"
