#!/usr/bin/env bash
# Idle connections: how much broker memory one idle, subscribed connection costs (DESIGN.md goal:
# broker RSS growth <= 512 B per connection), at a scale past the open-file limit.
#
# Starts a FRESH ringmq (generated TOML, --shards/--rings-per-shard as given, pinned to
# BROKER_CPUS), waits until it listens, samples its VmRSS (and /proc/PID/smaps) and the kernel's
# /proc/net/sockstat, opens N connections with the load generator's `conn --subscribe` scenario
# (direct descriptors, several rings per thread, spread over 127.0.0.x source addresses, pinned
# to LOAD_CPUS), holds them, samples again once every connection is up and subscribed, and
# divides the RSS growth by the connections actually established. Kernel memory is reported
# beside it, not in it: sockstat (TCP inuse, mem pages x 4096) and Slab from /proc/meminfo.
#
# Writes results/<date>-<time>-<host>-idle-<N>/: run.json (commit, kernel, CPU, exact commands,
# config, every figure), summary.md, broker.toml, broker.log and loadgen/ (summary.json,
# connect.hgrm). Prints a one-screen summary. Exits 3 (after writing the results) when fewer
# connections than asked were established and held, or the broker died.
#
# Usage: bench/idle.sh [--shards S] [--rings-per-shard R] [--connections N] [--rate CONNS_PER_S]
#                      [--sources A-B] [--hold SECS] [--port P] [--out DIR] [--quick]
#                      [--tls | --transport plain|tls] [--no-build] [--no-sysctl]
#   --shards S            broker shards (default 2)
#   --rings-per-shard R   io_uring rings per shard, each its own fixed-file table of about the
#                         open-file limit (default 3: 2 x 3 x 19,936 = 119,616 slots); `auto`:
#                         the fewest that hold --connections at this open-file limit
#   --connections N       idle subscribed connections to open (default 100000)
#   --rate C              connections opened per second (default 10000)
#   --sources A-B         source addresses for the load generator (default 127.0.0.2-127.0.0.40)
#   --hold SECS           seconds to hold every connection before sampling (default 3)
#   --out DIR             results root (default results/; --quick: a temporary folder)
#   --quick               5,000 connections, short hold, under 30 s after the build (CI)
#   --transport tls       the connections speak TLS: the broker's only listener is mqtt+tls with a
#                         certificate made at run time (bench/tls.sh, TLS_KEY=rsa|ec, default
#                         rsa), the load generator trusts its CA; results in ...-idle-N-tls/
#   --tls                 both, one after the other: plain, then TLS, same settings; the TLS
#                         run's summary shows the plain figure beside its own (exit: the worse)
#   --no-build            use the release binaries already built
#   --no-sysctl           leave the sysctls alone (otherwise raises the few a big run needs)
# Environment: BROKER_CPUS (default 1), LOAD_CPUS (default 0), RECV_BUFFER_COUNT and
#   RECV_BUFFER_SIZE (the broker's provided buffers per shard, split over its rings, default
#   512 x 4096 B, as the broker),
#   CONNECT_TIMEOUT (seconds one connection may take to its SUBACK, and the slack past N / rate
#   before measuring starts anyway; default 10, TLS 30), RINGMQ_COMMIT (the commit to report
#   where the tree has no .git), RINGMQ_BIN and LOADGEN_BIN (default target/release/ringmq and
#   ringmq-loadgen).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

shards=2
rings=3
connections=100000
rate=10000
sources="127.0.0.2-127.0.0.40"
hold=3
port=""
out_root=""
quick=0
build=1
sysctl_apply=1
transport=plain
both=0
conn_set=0; rate_set=0; hold_set=0
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --shards) shards="$2"; shift ;;
        --rings-per-shard) rings="$2"; shift ;;
        --connections) connections="$2"; conn_set=1; shift ;;
        --rate) rate="$2"; rate_set=1; shift ;;
        --sources) sources="$2"; shift ;;
        --hold) hold="$2"; hold_set=1; shift ;;
        --port) port="$2"; shift ;;
        --out) out_root="$2"; shift ;;
        --quick) quick=1 ;;
        --tls) both=1 ;;
        --transport) transport="$2"; shift ;;
        --no-build) build=0 ;;
        --no-sysctl) sysctl_apply=0 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "idle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$transport" in plain|tls) ;; *) echo "idle.sh: --transport plain or tls" >&2; exit 2 ;; esac
if [ "$both" = 1 ]; then
    # Plain, then TLS, each a whole run of this script; then the TLS summary gets the plain
    # figure beside its own.
    rest=()
    for a in "${args[@]}"; do [ "$a" = --tls ] || rest+=("$a"); done
    runs=()
    worst=0
    for t in plain tls; do
        rc=0
        "$0" "${rest[@]}" --transport "$t" | tee "/tmp/ringmq-idle-$t.$$.out" || rc=$?
        [ "$rc" -le "$worst" ] || worst=$rc
        runs+=("$(sed -n 's/^   results in //p' "/tmp/ringmq-idle-$t.$$.out" | tail -1)")
        rm -f "/tmp/ringmq-idle-$t.$$.out"
        [ -n "${runs[-1]}" ] || { echo "idle.sh: the $t run wrote no results" >&2; exit "$((worst > 0 ? worst : 1))"; }
        # Later runs reuse the build.
        [[ " ${rest[*]} " == *" --no-build "* ]] || rest+=(--no-build)
    done
    python3 - "${runs[0]}" "${runs[1]}" <<'EOF'
import json, os, sys
plain_dir, tls_dir = sys.argv[1], sys.argv[2]
plain, tls = (json.load(open(os.path.join(d, "run.json"))) for d in (plain_dir, tls_dir))
def b(x):
    return "-" if x is None else f"{x:,.0f} B"
p, t = plain["broker_rss_bytes_per_conn"], tls["broker_rss_bytes_per_conn"]
tls["plain_run"] = {"dir": os.path.basename(plain_dir), "broker_rss_bytes_per_conn": p,
                    "broker_rss_bytes_per_conn_excluding_buffer_pools":
                        plain["broker_rss_bytes_per_conn_excluding_buffer_pools"],
                    "connections_established": plain["connections_established"]}
json.dump(tls, open(os.path.join(tls_dir, "run.json"), "w"), indent=2)
line = (f"Same invocation (`--tls`), plain TCP first: {b(p)} per connection "
        f"([{os.path.basename(plain_dir)}](../{os.path.basename(plain_dir)}/summary.md)); over TLS {b(t)}"
        + (f", so TLS adds {b(t - p)} per idle connection." if p is not None and t is not None else "."))
text = open(os.path.join(tls_dir, "summary.md")).read().split("\n")
text[1:1] = ["", line]
open(os.path.join(tls_dir, "summary.md"), "w").write("\n".join(text))
print(f"== idle, plain vs TLS: {b(p)} vs {b(t)} broker RSS per connection"
      + (f" (TLS +{b(t - p)})" if p is not None and t is not None else ""))
EOF
    exit "$worst"
fi
if [ "$transport" = tls ] && [ "$rate_set" = 0 ]; then
    # A full handshake costs the broker a signature: open them at a pace it keeps up with.
    rate=1000
fi
if [ "$quick" = 1 ]; then
    [ "$conn_set" = 1 ] || connections=5000
    [ "$rate_set" = 1 ] || rate=5000
    [ "$hold_set" = 1 ] || hold=1
    [ -n "$out_root" ] || out_root="$(mktemp -d /tmp/ringmq-idle-quick.XXXXXX)"
fi
[ -n "$out_root" ] || out_root="$root/results"
rings_auto=0
if [ "$rings" = auto ]; then rings_auto=1; rings=1; fi
for pair in "shards:$shards" "rings-per-shard:$rings" "connections:$connections" "rate:$rate" \
    "hold:$hold"; do
    case "${pair#*:}" in
        ''|*[!0-9]*|0) echo "idle.sh: --${pair%%:*} needs a positive whole number" >&2; exit 2 ;;
    esac
done
[ -z "$port" ] || case "$port" in ''|*[!0-9]*) echo "idle.sh: --port needs a number" >&2; exit 2 ;; esac
BROKER_CPUS="${BROKER_CPUS:-1}"
LOAD_CPUS="${LOAD_CPUS:-0}"
RECV_BUFFER_COUNT="${RECV_BUFFER_COUNT:-512}"
RECV_BUFFER_SIZE="${RECV_BUFFER_SIZE:-4096}"
connect_timeout="${CONNECT_TIMEOUT:-10}"
# Below 10000: outside the ephemeral range even once it is widened to 10000-65535.
[ -n "$port" ] || port=$((9100 + RANDOM % 500))

log() { echo "idle.sh: $*" >&2; }
command -v python3 >/dev/null || { log "needs python3"; exit 1; }
command -v taskset >/dev/null || { log "needs taskset (util-linux)"; exit 1; }

# --- build ----------------------------------------------------------------------------------
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
# The commit the binaries were built from: HEAD (plus "-dirty" when the sources differ from it)
# at build time, kept in a stamp beside them so a later --no-build run reports it too. A binary
# newer than the stamp was rebuilt by someone else: its commit is unknown.
stamp="$target_dir/release/.idle-build-commit"
tree_commit() {
    local c
    # RINGMQ_COMMIT: where the tree travelled without its .git (bench/bigbox.sh).
    [ -z "${RINGMQ_COMMIT:-}" ] || { echo "$RINGMQ_COMMIT"; return; }
    c="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD -- src loadgen Cargo.toml Cargo.lock 2>/dev/null || c="$c-dirty"
    echo "$c"
}
if [ "$build" = 1 ]; then
    tree_commit > "$stamp"
fi
if [ -n "${RINGMQ_COMMIT:-}" ]; then
    commit="$RINGMQ_COMMIT"
elif [ -f "$stamp" ] && [ ! "$RINGMQ" -nt "$stamp" ] && [ ! "$LOADGEN" -nt "$stamp" ]; then
    commit="$(cat "$stamp")"
else
    commit="unknown (binaries built outside idle.sh; HEAD now $(tree_commit))"
fi

# --- capacity checks --------------------------------------------------------------------------
# Each ring's fixed-file table holds the soft open-file limit minus the broker's headroom (64).
nofile="$(ulimit -Sn)"
# Each ring's table holds at most the kernel's IORING_MAX_FIXED_FILES (1,048,576), whatever the limit.
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nofile" -le 1048576 ] || nofile=1048576
if [ "$rings_auto" = 1 ]; then
    per_shard=$((shards * (nofile - 64)))
    rings=$(((connections + per_shard - 1) / per_shard))
    log "--rings-per-shard auto: $rings ring(s) per shard at an open-file limit of $nofile"
fi
slots=$((shards * rings * (nofile - 64)))
if [ "$slots" -lt "$connections" ]; then
    log "$shards shards x $rings rings x $((nofile - 64)) slots = $slots < $connections connections:"
    log "  give more --rings-per-shard (the open-file limit here is $nofile per ring)"
    exit 2
fi

# --- sysctls --------------------------------------------------------------------------------
# Only the few a big loopback run needs; raised, never lowered; printed before -> after.
sysctl_log=()
sysctl_read() { tr -s ' \t' '  ' < "/proc/sys/${1//.//}" 2>/dev/null; }
sysctl_write() {
    local key="$1" want="$2" before after
    before="$(sysctl_read "$key")" || { sysctl_log+=("$key: absent, skipped"); return 0; }
    if [ "$before" = "$want" ]; then sysctl_log+=("$key = $before (unchanged)"); return 0; fi
    if [ "$sysctl_apply" = 1 ] && echo "$want" > "/proc/sys/${key//.//}" 2>/dev/null; then
        after="$(sysctl_read "$key")"
        sysctl_log+=("$key: $before -> $after")
    else
        sysctl_log+=("$key = $before (wanted $want; not changed)")
    fi
}
raise_to() {
    local key="$1" min="$2" cur
    cur="$(sysctl_read "$key")" || { sysctl_log+=("$key: absent, skipped"); return 0; }
    if [ "$cur" -ge "$min" ]; then sysctl_log+=("$key = $cur (unchanged)"); return 0; fi
    sysctl_write "$key" "$min"
}
read -r port_lo port_hi <<< "$(sysctl_read net.ipv4.ip_local_port_range)"
want_lo=$port_lo; want_hi=$port_hi
[ "$want_lo" -le 10000 ] || want_lo=10000
[ "$want_hi" -ge 65535 ] || want_hi=65535
sysctl_write net.ipv4.ip_local_port_range "$want_lo $want_hi"
raise_to net.core.somaxconn 65535
raise_to net.ipv4.tcp_max_syn_backlog 65535
# Loopback connections are tracked when conntrack is loaded (one entry each), and every socket
# of both ends is a struct file system-wide.
raise_to net.netfilter.nf_conntrack_max $((connections * 2 + 65536))
raise_to fs.file-max $((connections * 4 + 262144))
# The run ends with N connections closing at once: TIME_WAIT buckets for them.
raise_to net.ipv4.tcp_max_tw_buckets $((connections * 2 + 65536))
for line in "${sysctl_log[@]}"; do log "sysctl $line"; done

read -r port_lo port_hi <<< "$(sysctl_read net.ipv4.ip_local_port_range)"
n_sources="$(python3 -c "
import ipaddress, sys
lo, _, hi = sys.argv[1].partition('-')
print(int(ipaddress.ip_address(hi or lo)) - int(ipaddress.ip_address(lo)) + 1)" "$sources")"
if [ $(((port_hi - port_lo + 1) * n_sources)) -lt "$connections" ]; then
    log "$n_sources source addresses x $((port_hi - port_lo + 1)) ports < $connections: widen --sources"
    exit 2
fi

# --- the run --------------------------------------------------------------------------------
date_tag="$(date -u +%Y-%m-%d-%H%M)"
host="$(hostname -s 2>/dev/null || hostname)"
dir="$out_root/$date_tag-$host-idle-$connections"
[ "$transport" = plain ] || dir="$dir-tls"
# Two runs in one minute (say two layouts back to back) get -2, -3, ... rather than one
# overwriting the other.
if [ -e "$dir" ]; then
    n=2
    while [ -e "$dir-$n" ]; do n=$((n + 1)); done
    dir="$dir-$n"
fi
mkdir -p "$dir/loadgen"
work="$(mktemp -d /tmp/ringmq-idle.XXXXXX)"
broker_pid=""
lg_pid=""
stop_pid() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$lg_pid"; lg_pid=""
    stop_pid "$broker_pid"; broker_pid=""
    rm -rf "$work"
    # A run that stopped before its report leaves no half folder among the results.
    [ -f "$dir/run.json" ] || rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
sockstat() { tr '\n' ';' < /proc/net/sockstat; }
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }

conns_max=1000000
[ "$conns_max" -ge $((connections * 2)) ] || conns_max=$((connections * 2))
listen_line="listen = \"127.0.0.1:$port\""
tls_listener=""
lg_tls=""
if [ "$transport" = tls ]; then
    command -v openssl >/dev/null || { log "needs openssl for --transport tls"; exit 1; }
    . "$here/tls.sh"
    pki="$work/pki"
    make_test_certs "$pki" "${TLS_KEY:-rsa}"
    listen_line=""
    tls_listener="
[[listener]]
bind = \"127.0.0.1:$port\"
protocol = \"mqtt+tls\"
certfile = \"$pki/server.pem\"
keyfile = \"$pki/server.key\""
    # Handshakes queue behind the broker's signatures: give each one time.
    lg_tls="--tls-ca $pki/ca.pem"
    connect_timeout="${CONNECT_TIMEOUT:-30}"
fi
cat > "$dir/broker.toml" <<EOF
$listen_line
shards = $shards
rings_per_shard = $rings
allow_anonymous = true
recv_buffer_count = $RECV_BUFFER_COUNT
recv_buffer_size = $RECV_BUFFER_SIZE

[limits]
connections_max = $conns_max
$tls_listener
EOF
broker_cmd="taskset -c $BROKER_CPUS $RINGMQ --config $dir/broker.toml"
log "starting: $broker_cmd"
$broker_cmd > "$work/broker.log" 2>&1 &
broker_pid=$!
# Wait for the "listening" line rather than probing the port: a probe would be one more
# connection on the fresh broker before the first sample.
listening=0
for _ in $(seq 1 200); do
    if grep -q "listening on" "$work/broker.log"; then listening=1; break; fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.05
done
if [ "$listening" = 0 ]; then
    log "broker is not listening after 10 s:"; cat "$work/broker.log" >&2; exit 1
fi
sleep 0.5
rss_before="$(rss_kb "$broker_pid")"
cp "/proc/$broker_pid/smaps" "$work/smaps.before"
sock_before="$(sockstat)"
slab_before="$(slab_kb)"

ready="$work/ready"
# Measuring starts once every connection has its CONNACK and SUBACK (or the connect deadline,
# N / rate + CONNECT_TIMEOUT + 1 s, passed) plus 1 s of warm-up; the hold runs inside --duration.
lg_cmd="taskset -c $LOAD_CPUS $LOADGEN conn -n $connections --subscribe --ramp $rate \
--source $sources --port $port --warmup 1 --duration $((hold + 2)) --drain 0.5 --cpus $LOAD_CPUS \
--label ringmq --out $dir/loadgen --ready-file $ready --connect-timeout $connect_timeout -q $lg_tls"
log "load: $lg_cmd"
t_start="${EPOCHREALTIME/./}"
$lg_cmd > "$work/loadgen.out" 2> "$work/loadgen.err" &
lg_pid=$!
rss_after=""; sock_after=""; slab_after=""; t_ready=""
while kill -0 "$lg_pid" 2>/dev/null; do
    if [ -z "$t_ready" ] && [ -e "$ready" ]; then
        t_ready="${EPOCHREALTIME/./}"
        log "all connections up; holding them $hold s before sampling"
        sleep "$hold"
        rss_after="$(rss_kb "$broker_pid")"
        [ -n "$rss_after" ] || { log "the broker died while the connections were held:"; cat "$work/broker.log" >&2; exit 1; }
        cp "/proc/$broker_pid/smaps" "$work/smaps.after"
        sock_after="$(sockstat)"
        slab_after="$(slab_kb)"
    fi
    sleep 0.1
done
lg_rc=0; wait "$lg_pid" || lg_rc=$?
lg_pid=""
alive=1; kill -0 "$broker_pid" 2>/dev/null || alive=0
stop_pid "$broker_pid"; broker_pid=""
cp "$work/broker.log" "$dir/broker.log"
cp "$work/loadgen.out" "$dir/loadgen/summary.txt"
if [ "$lg_rc" != 0 ] || [ ! -f "$dir/loadgen/summary.json" ]; then
    log "load generator failed (exit $lg_rc):"; cat "$work/loadgen.err" >&2; exit 1
fi
if [ -z "$rss_after" ]; then
    log "the load generator never started measuring (no ready file): no sample taken"
    cat "$work/loadgen.out" >&2; exit 1
fi

# --- report ---------------------------------------------------------------------------------
python3 - "$dir" "$work" <<EOF
import json, os, platform, re, subprocess, sys
d, work = sys.argv[1], sys.argv[2]

def out(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as e:
        return f"unknown ({e})"

def sockstat(text):
    tcp = re.search(r"TCP: inuse (\d+) orphan (\d+) tw (\d+) alloc (\d+) mem (\d+)", text)
    return {"raw": text, "tcp_inuse": int(tcp.group(1)), "tcp_tw": int(tcp.group(3)),
            "tcp_alloc": int(tcp.group(4)), "tcp_mem_pages": int(tcp.group(5)),
            "tcp_mem_bytes": int(tcp.group(5)) * 4096}

def smaps(path):
    maps, cur = {}, None
    for line in open(path):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(None, 5)
            cur = (parts[0], parts[5].strip() if len(parts) > 5 else "")
            maps[cur] = {"size_kb": 0, "rss_kb": 0}
        elif cur and line.startswith("Size:"):
            maps[cur]["size_kb"] = int(line.split()[1])
        elif cur and line.startswith("Rss:"):
            maps[cur]["rss_kb"] = int(line.split()[1])
    return maps

lg = json.load(open(os.path.join(d, "loadgen", "summary.json")))
established = lg["connected"] - lg["dropped"]
rss_before, rss_after = int("$rss_before"), int("$rss_after")
growth = (rss_after - rss_before) * 1024
sb, sa = sockstat("$sock_before"), sockstat("$sock_after")

# Where the growth went, per mapping. Each ring's provided-buffer pool (the shard's
# recv_buffer_count split over its rings: the broker's log says how many per ring, x
# recv_buffer_size, anonymous) faults in as receives walk through it and then stays resident: a
# fixed cost per ring that holds connections, not per connection. Its entry ring (16 B per
# buffer) is a small anonymous mapping beside it, and the kernel merges adjacent anonymous
# mappings, so a mapping is counted as buffer rings when it is anonymous, unnamed, and made of
# 1..rings whole pools plus at most as many entry rings.
pools = $shards * $rings
said = re.search(r"(\d+) receive buffers per ring", open(os.path.join(work, "broker.log")).read())
# A broker that does not log it: one pool of recv_buffer_count per ring (true before b2becd4).
per_ring = int(said.group(1)) if said else $RECV_BUFFER_COUNT
pool_kb = per_ring * $RECV_BUFFER_SIZE // 1024
entries_kb = -(-per_ring * 16 // 4096) * 4
all_pools_kb = pool_kb * pools
def buffer_rings(name, size_kb):
    whole, rest = divmod(size_kb, pool_kb)
    return (name == "" and 1 <= whole <= pools and rest % entries_kb == 0
            and rest // entries_kb <= whole)
before, after = smaps(os.path.join(work, "smaps.before")), smaps(os.path.join(work, "smaps.after"))
grown, pool_growth_kb = [], 0
for key, m in after.items():
    delta = m["rss_kb"] - before.get(key, {"rss_kb": 0})["rss_kb"]
    if delta == 0:
        continue
    is_pool = buffer_rings(key[1], m["size_kb"])
    if is_pool:
        pool_growth_kb += delta
    grown.append({"range": key[0], "name": key[1] or "[anon]", "size_kb": m["size_kb"],
                  "rss_kb_before": before.get(key, {"rss_kb": 0})["rss_kb"],
                  "rss_kb_after": m["rss_kb"], "growth_kb": delta, "buffer_pool": is_pool})
grown.sort(key=lambda g: -g["growth_kb"])
gone_kb = sum(m["rss_kb"] for k, m in before.items() if k not in after)

per_conn = growth / established if established else None
per_conn_no_pool = (growth - pool_growth_kb * 1024) / established if established else None
slab_delta = (int("$slab_after") - int("$slab_before")) * 1024
t_start, t_ready = int("$t_start"), int("${t_ready:-0}")
broker_log = open(os.path.join(d, "broker.log")).read().splitlines()
run = {
    "kind": "idle",
    "transport": "$transport",
    "tls_key": "${TLS_KEY:-rsa}" if "$transport" == "tls" else None,
    "tls_session": lg.get("tls_session"),
    "quick": bool($quick),
    "machine": {
        "commit": "$commit",
        "host": "$host",
        "kernel": platform.release(),
        "cpu_model": out("awk -F': ' '/^model name/ {print \$2; exit}' /proc/cpuinfo"),
        "cpus_online": os.cpu_count(),
        "broker_cpus": "$BROKER_CPUS",
        "load_cpus": "$LOAD_CPUS",
        "rlimit_nofile_soft": int("$nofile"),
        "mem_total_kb": int(out("awk '/^MemTotal:/ {print \$2}' /proc/meminfo") or 0),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    },
    "versions": {"ringmq": out("$RINGMQ --version"), "loadgen": out("$LOADGEN --version")},
    "commands": {
        "script": "bench/idle.sh --shards $shards --rings-per-shard $rings --connections $connections --rate $rate --sources $sources --hold $hold --transport $transport" + (" --quick" if $quick else ""),
        "broker": "$broker_cmd",
        "loadgen": "$lg_cmd",
        "broker_config": open(os.path.join(d, "broker.toml")).read(),
        "built_by_this_run": bool($build),
    },
    "sysctls": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${sysctl_log[@]}"),
    "layout": {"shards": $shards, "rings_per_shard": $rings,
               "slots_per_ring": int("$nofile") - 64, "slots": $slots},
    "connections_requested": $connections,
    "connections_established": established,
    "loadgen": {k: lg[k] for k in ("connected", "connect_failed", "connect_refused",
                                    "subscribe_refused", "dropped", "connect_rate_per_sec",
                                    "connect_latency", "errors", "loadgen_cpu_secs", "wall_secs")},
    "connect_rate_per_sec": lg["connect_rate_per_sec"],
    "errors": lg["errors"],
    "connect_secs_to_ready": (t_ready - t_start) / 1e6 if t_ready else None,
    "hold_secs": $hold,
    "broker_alive_after": bool($alive),
    "broker_rss_kb_before": rss_before,
    "broker_rss_kb_after": rss_after,
    "broker_rss_growth_bytes": growth,
    "broker_rss_bytes_per_conn": per_conn,
    "buffer_pool": {"recv_buffer_count": $RECV_BUFFER_COUNT, "buffers_per_ring": per_ring,
                    "recv_buffer_size": $RECV_BUFFER_SIZE,
                    "pools": pools, "bytes_all_pools": all_pools_kb * 1024,
                    "rss_growth_bytes": pool_growth_kb * 1024},
    "broker_rss_bytes_per_conn_excluding_buffer_pools": per_conn_no_pool,
    "goal_bytes_per_conn": 512,
    "rss_growth_by_mapping": grown[:20],
    "rss_of_mappings_gone_kb": gone_kb,
    "sockstat_before": sb,
    "sockstat_after": sa,
    "tcp_inuse_delta": sa["tcp_inuse"] - sb["tcp_inuse"],
    "tcp_mem_bytes_delta": sa["tcp_mem_bytes"] - sb["tcp_mem_bytes"],
    "slab_bytes_delta_systemwide": slab_delta,
    "slab_bytes_per_conn_systemwide": slab_delta / established if established else None,
    "broker_log_tail": broker_log[-(2 + $shards):],
}
json.dump(run, open(os.path.join(d, "run.json"), "w"), indent=2)

def b(x):
    return "-" if x is None else f"{x:,.0f} B"
verdict = "-" if per_conn is None else ("within" if per_conn <= 512 else "over")
lines = [
    f"# idle: {established:,} idle subscribed connections" + (" over TLS" if "$transport" == "tls" else ""),
    "",
    f"Fresh ringmq, {$shards} shard(s) x {$rings} ring(s) per shard ({$slots:,} fixed-file slots), "
    f"pinned to core(s) $BROKER_CPUS; load generator on core(s) $LOAD_CPUS. "
    f"{run['machine']['cpu_model']}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
    f"commit \`{run['machine']['commit'][:12]}\`.",
    "",
    "| figure | value |",
    "|---|---|",
    f"| connections established (requested) | {established:,} ({$connections:,}) |",
    f"| connect failures / dropped | {lg['connect_failed']:,} / {lg['dropped']:,} |",
    f"| connect rate | {lg['connect_rate_per_sec']:,.0f} conn/s (asked {$rate:,}/s) |",
    f"| broker VmRSS before -> after | {rss_before:,} kB -> {rss_after:,} kB |",
    f"| **broker RSS growth per connection** | **{b(per_conn)}** ({verdict} the 512 B goal) |",
    f"| of which provided-buffer pools ({pools} rings x {per_ring} x {$RECV_BUFFER_SIZE} B = {pool_kb / 1024:g} MiB + entry ring, fixed per ring) | "
    f"{pool_growth_kb * 1024:,} B total, {b(pool_growth_kb * 1024 / established if established else None)} per connection |",
    f"| RSS growth per connection without the pools | {b(per_conn_no_pool)} |",
    f"| kernel TCP sockets in use before -> after (both ends) | {sb['tcp_inuse']:,} -> {sa['tcp_inuse']:,} |",
    f"| kernel TCP buffer memory (sockstat mem) before -> after | {sb['tcp_mem_bytes']:,} B -> {sa['tcp_mem_bytes']:,} B |",
    f"| kernel Slab growth, system-wide (both ends) | {slab_delta:,} B, {b(slab_delta / established if established else None)} per connection |",
    "",
    "RSS is sampled after every connection has its CONNACK and SUBACK and has been held "
    f"{$hold} s. Slab and sockstat are system-wide (the load generator's sockets are in them too).",
    "",
    "Commands:",
    "",
    f"- script: \`{run['commands']['script']}\`",
    f"- broker: \`{run['commands']['broker']}\`",
    f"- load: \`{run['commands']['loadgen']}\`",
    "",
    "Largest RSS growth by mapping:",
    "",
    "| mapping | size | RSS before -> after | buffer rings |",
    "|---|---|---|---|",
] + [f"| {g['range']} {g['name']} | {g['size_kb']:,} kB | {g['rss_kb_before']:,} -> {g['rss_kb_after']:,} kB | {'yes' if g['buffer_pool'] else ''} |"
     for g in grown[:6]] + [
    "",
    "Broker at exit:",
    "",
    "\`\`\`",
] + run["broker_log_tail"] + ["\`\`\`", ""]
if lg["errors"]:
    lines[-1:-1] = ["", "Load generator errors: " + ", ".join(f"{v} x {k}" for k, v in lg["errors"].items())]
open(os.path.join(d, "summary.md"), "w").write("\n".join(lines) + "\n")

print(f"== idle ($transport): {established:,} of {$connections:,} connections up ({lg['connect_failed']:,} failed, "
      f"{lg['dropped']:,} dropped) at {lg['connect_rate_per_sec']:,.0f} conn/s")
print(f"   broker {$shards} shard(s) x {$rings} ring(s) on core(s) $BROKER_CPUS; load on $LOAD_CPUS")
print(f"   broker RSS {rss_before:,} kB -> {rss_after:,} kB: {b(per_conn)} per connection ({verdict} 512 B)")
print(f"   without the provided-buffer pools ({pool_growth_kb:,} kB faulted in): {b(per_conn_no_pool)} per connection")
print(f"   sockstat TCP inuse {sb['tcp_inuse']:,} -> {sa['tcp_inuse']:,}, mem {sb['tcp_mem_bytes']:,} B -> {sa['tcp_mem_bytes']:,} B")
print(f"   kernel Slab +{slab_delta / 2**20:,.0f} MiB system-wide ({b(slab_delta / established if established else None)} per connection, both ends)")
for k, v in lg["errors"].items():
    print(f"   load generator error x{v}: {k}")
if not $alive:
    print("   WARNING: the broker had died before it was stopped")
print(f"   results in {d}")
# Exit 3 when not every connection was established and held, so CI (--quick) notices.
sys.exit(0 if established == $connections and $alive else 3)
EOF
