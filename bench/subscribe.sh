#!/usr/bin/env bash
# One SUBSCRIBE with many filters (issue 7 item 9): the time from sending it to its SUBACK, and
# the PINGREQ round trips a second client of the same shard sees meanwhile, for each git
# revision given (interleaved rounds, A B A B). A revision is built from `git archive` in a
# scratch folder (the working tree is never touched); `.` is the working tree as it is.
#
# The client side is the ignored test `big_subscribe_time_and_ping_latency` in tests/limits.rs,
# built once from the working tree and pointed at each broker with RINGMQ_BENCH_ADDR.
#
# Usage: bench/subscribe.sh [--filters N] [--rounds R] [REV...]     (default REVs: main .)
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0), BENCH_DIR (default
#   target/bench-subscribe: sources, a shared cargo target folder, one binary per revision).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$root"

filters=50000
rounds=2
revs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --filters) filters="$2"; shift ;;
        --rounds) rounds="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) revs+=("$1") ;;
    esac
    shift
done
[ ${#revs[@]} -gt 0 ] || revs=(main .)
bench_dir="${BENCH_DIR:-$root/target/bench-subscribe}"
mkdir -p "$bench_dir/bin"
need taskset "taskset (util-linux)"

# One ringmq binary per revision; `.` is built in place.
binary_of() {
    local rev="$1"
    if [ "$rev" = . ]; then
        echo "$root/target/release/ringmq"
        return
    fi
    local name
    name="$(git rev-parse --short "$rev^{commit}")"
    echo "$bench_dir/bin/ringmq-$name"
}
for rev in "${revs[@]}"; do
    bin="$(binary_of "$rev")"
    if [ "$rev" = . ]; then
        log "building the working tree"
        cargo build --release --bin ringmq >&2
        continue
    fi
    [ -x "$bin" ] && continue
    src="$bench_dir/src-$(basename "$bin")"
    log "building $rev into $bin"
    rm -rf "$src" && mkdir -p "$src"
    git archive "$rev" | tar -x -C "$src"
    (cd "$src" && CARGO_TARGET_DIR="$bench_dir/target" cargo build --release --bin ringmq >&2)
    cp "$bench_dir/target/release/ringmq" "$bin"
done
log "building the client (tests/limits.rs)"
cargo test --release --test limits --no-run >&2

for round in $(seq 1 "$rounds"); do
    for rev in "${revs[@]}"; do
        bin="$(binary_of "$rev")"
        port=$((20000 + RANDOM % 20000))
        start_broker "$BROKER_CPUS" "$bench_dir/broker.log" \
            "$bin" --listen "127.0.0.1:$port" --shards 1
        wait_port "$port"
        line="$(RINGMQ_BENCH_ADDR="127.0.0.1:$port" RINGMQ_BENCH_FILTERS="$filters" \
            taskset -c "$LOAD_CPUS" cargo test -q --release --test limits -- --ignored \
            --nocapture big_subscribe_time_and_ping_latency 2>&1 | grep '^SUBSCRIBE' || true)"
        stop_broker
        [ -n "$line" ] || { log "round $round, $rev: no figure (see $bench_dir/broker.log)"; exit 1; }
        if [ "$rev" = . ]; then
            label="working tree at $(git rev-parse --short HEAD)"
            git diff --quiet HEAD || label="$label + changes"
        else
            label="$rev ($(git rev-parse --short "$rev"))"
        fi
        echo "round $round, $label: $line"
    done
done
