# Shared pieces of the bench scripts (partial.sh, storm.sh, flood.sh, subscribe.sh, ab.sh,
# profile.sh).
# Each sources it right after its own `set -euo pipefail`:
#     . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Sourcing sets `here` (bench/), `root` (the repository; nothing changes directory),
# `bench_name` (the script's file name, the prefix of its messages), BROKER_CPUS (default 1)
# and LOAD_CPUS (default 0), and an EXIT trap that stops the broker and removes the work folder;
# the rest are functions. (bench/compare.sh sources it for mosquitto_conf and ringmq_limits and keeps its own
# copies of the rest; bench/idle.sh keeps its own.)
# shellcheck shell=bash

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
bench_name="$(basename "$0")"
# Where the broker and the load run (taskset -c lists).
BROKER_CPUS="${BROKER_CPUS:-1}"
LOAD_CPUS="${LOAD_CPUS:-0}"
broker_pid=""
work=""

# A message on stderr, prefixed with the script's name.
log() { echo "$bench_name: $*" >&2; }

# The script's header comment (from line 2 up to its `set` line), for --help.
usage() { sed -n '2,/^set /{/^#/p}' "$0"; }

# Exits 1 unless command $1 is on PATH; $2 is what the message says is needed (default $1).
need() { command -v "$1" >/dev/null || { log "needs ${2:-$1}"; exit 1; }; }

# Exits 2 unless every comma-separated item of $2 is a positive whole number; $1 names the
# option and $3 (optional) says what it wants, for the message.
positive_numbers() {
    local item
    for item in ${2//,/ }; do
        case "$item" in ''|*[!0-9]*|0) log "$1 needs ${3:-a positive whole number}"; exit 2 ;; esac
    done
    [ -n "$2" ] || { log "$1 needs ${3:-a positive whole number}"; exit 2; }
}

# Sets `binary` to the broker to run: as given (a --binary flag), else target/release/ringmq,
# built first (cargo's output on stderr) when `build` is 1. Exits 1 unless it is executable.
broker_binary() {
    if [ -z "$binary" ]; then
        if [ "$build" = 1 ]; then
            log "building ringmq (release)"
            cargo build --release -p ringmq >&2
        fi
        binary="$root/target/release/ringmq"
    fi
    [ -x "$binary" ] || { log "$binary is missing"; exit 1; }
}

# Sets `work` to a fresh folder /tmp/ringmq-$1.XXXXXX (removed on exit).
make_work() { work="$(mktemp -d "/tmp/ringmq-$1.XXXXXX")"; }

# Prints the mosquitto.conf the benchmarks run mosquitto with: a listener on 127.0.0.1:PORT
# (followed by the lines EXTRA, e.g. its TLS files), no persistence, no inflight, queue or
# connection limit, TCP_NODELAY, no log. Usage: mosquitto_conf PORT [EXTRA] > FILE
mosquitto_conf() {
    printf 'listener %s 127.0.0.1\n' "$1"
    [ -z "${2:-}" ] || printf '%s\n' "$2"
    cat <<'EOF'
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 0
max_connections -1
set_tcp_nodelay true
log_dest none
EOF
}

# Writes $work/ringmq.toml for $port: one shard (flags may ask for more), no inflight, queue or
# outbox limit a closed loop reaches. The A/B scripts' config (ab.sh, profile.sh), for
# start_on_free_port.
one_shard_conf() {
    printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n' \
        "$port" > "$work/ringmq.toml"
}

# Prints the [limits] the comparisons run ringmq with (no limit a load reaches), to follow a
# ringmq.toml's top-level keys. Usage: ringmq_limits >> FILE
ringmq_limits() {
    cat <<'EOF'

[limits]
connections_max = 1000000
inflight_max = 65535
offline_queue_max = 1000000
outbox_bytes_max = 268435456
EOF
}

# Runs `taskset -c CPUS CMD...` in the background, stdout and stderr to LOG; sets broker_pid.
# Usage: start_broker CPUS LOG CMD...
start_broker() {
    local cpus="$1" log_file="$2"
    shift 2
    taskset -c "$cpus" "$@" > "$log_file" 2>&1 &
    broker_pid=$!
}

# start_on_free_port WRITE_CONF CPUS LOG CMD...: moves $port on by one, runs the function
# WRITE_CONF (it writes the broker's config for $port), then start_broker CPUS LOG CMD... and
# waits for the port. A port may be held by any socket, a client's included (the bench widens
# the ephemeral range to 10000-65535): a broker that exits at start gets the next port, up to
# 5 tries, each said with the last line of its log.
start_on_free_port() {
    local write_conf="$1" attempt
    shift
    for attempt in 1 2 3 4 5; do
        port=$((port + 1))
        "$write_conf"
        start_broker "$@"
        wait_port "$port"
        kill -0 "$broker_pid" 2>/dev/null && return 0
        log "the broker exited at start on port $port (try $attempt): $(tail -n 1 "$2" 2>/dev/null)"
    done
    exit 1
}

# still_running LOG WHAT: exits 1 with LOG on stderr when the broker stopped during WHAT (read
# before its CPU time, which a gone process no longer has).
still_running() {
    kill -0 "$broker_pid" 2>/dev/null && return 0
    log "the broker stopped during $2; its log:"
    cat "$1" >&2
    exit 1
}

# Waits up to 10 s for ringmq's "listening on" line in LOG; exits 1 with the log on stderr if
# the broker stops first or never says it.
wait_listening() {
    local log_file="$1"
    for _ in $(seq 200); do
        grep -q "listening on" "$log_file" 2>/dev/null && return 0
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.05
    done
    grep -q "listening on" "$log_file" 2>/dev/null && return 0
    log "broker did not start:"
    cat "$log_file" >&2
    exit 1
}

# Waits up to 5 s until 127.0.0.1:PORT takes a connection (for brokers of any age, whatever
# they log); returns quietly either way: what runs next fails if nothing listens.
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
}

# Stops the broker start_broker started, if any: signal $1 (default TERM), then waits for it.
stop_broker() {
    if [ -n "$broker_pid" ]; then
        kill "-${1:-TERM}" "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
        broker_pid=""
    fi
}

# CPU time process $1 has used, user + system, in clock ticks (`getconf CLK_TCK` a second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# On exit: stop the broker, remove the work folder.
bench_cleanup() {
    stop_broker
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap bench_cleanup EXIT
