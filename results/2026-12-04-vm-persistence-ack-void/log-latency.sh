#!/usr/bin/env bash
# Where a sync = "ack" batch's time goes: the log's io_uring WRITE and FSYNC, from submission
# to completion, and from the previous one's completion to the next submission (the shard's
# turn), read from the io_uring tracepoints for 0.5 s in the middle of a pairs x100 QoS 1 run
# (one shard on core 1, ringmq-loadgen on core 0). Needs perf and root.
# Usage (repository root): results/2026-12-04-vm-persistence-ack-void/log-latency.sh [BINARY]
set -euo pipefail
bin="${1:-target/release/ringmq}"; loadgen="${LOADGEN:-target/release/ringmq-loadgen}"
work="$(mktemp -d)"; port=29911
printf 'listen = "127.0.0.1:%s"\nshards = 1\n[limits]\ninflight_max = 65535\noffline_queue_max = 1000000\noutbox_bytes_max = 268435456\n[persistence]\nmode = "on"\ndir = "%s/data"\nsync = "ack"\n' \
    "$port" "$work" > "$work/ringmq.toml"
taskset -c 1 "$bin" --config "$work/ringmq.toml" > "$work/broker.log" 2>&1 &
pid=$!; sleep 0.5
taskset -c 0 "$loadgen" pairs -n 100 --qos 1 --max --inflight 100 --clean-session false \
    --port "$port" --warmup 1 --duration 4 --drain 1 --out "$work/out" -q > /dev/null 2>&1 &
lg=$!; sleep 2
perf record -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -p "$pid" \
    -o "$work/perf.data" -- sleep 0.5 > /dev/null 2>&1
wait "$lg"; kill "$pid"; wait "$pid" || true
perf script -i "$work/perf.data" -F time,event,trace 2>/dev/null > "$work/trace.txt"
# The log's operations carry these user_data values (src/ring: Token::shard(Op::LogWrite),
# Token::shard(Op::LogSync)).
python3 - "$work/trace.txt" <<'PY'
import re, statistics, sys
ops = {"0xe00000000000000": "write", "0xf00000000000000": "fdatasync"}
last, took, gap, sizes, prev = {}, {"write": [], "fdatasync": []}, {"write": [], "fdatasync": []}, [], None
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+):\s+io_uring:(\w+): .*user_data (0x[0-9a-f]+)", line)
    if not m or m.group(3) not in ops:
        continue
    t, kind, op = float(m.group(1)) * 1e3, m.group(2), ops[m.group(3)]
    if kind == "io_uring_submit_req":
        last[op] = t
        if prev is not None:
            gap[op].append(t - prev)
    else:
        if op in last:
            took[op].append(t - last[op])
        if op == "write":
            sizes.append(int(re.search(r"result (-?\d+)", line).group(1)))
        prev = t
for op in took:
    print(f"{op}: {len(took[op])} in 0.5 s, submission to completion median {statistics.median(took[op]):.3f} ms "
          f"(mean {statistics.mean(took[op]):.3f}); previous completion to this submission median "
          f"{statistics.median(gap[op]):.3f} ms")
print(f"write size median {statistics.median(sizes):.0f} B")
PY
rm -rf "$work"
