#!/usr/bin/env python3
"""Turns the run folders that compare.sh wrote into run.json, summary.md and a comparison plot
per case, prints the head-to-head table, and (for real runs) rewrites the table between the
markers in results/README.md. Medians over rounds; ratios are ringmq / mosquitto and ringmq / the
best peer of the case (mosquitto, rumqttd or FlashMQ: the highest rate, or the lowest latency or
memory, whichever the case is judged by)."""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

BEGIN = "<!-- latest:begin -->"
END = "<!-- latest:end -->"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def machine(broker_cpus, load_cpus):
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # RINGMQ_COMMIT: where the tree travelled without its .git (bench/bigbox.sh on another machine).
    commit = os.environ.get("RINGMQ_COMMIT")
    if not commit:
        commit = sh("git rev-parse HEAD") or "unknown"
        if sh("git status --porcelain --untracked-files=no"):
            commit += "-dirty"
    return {
        "commit": commit,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "broker_cpus": broker_cpus,
        "load_cpus": load_cpus,
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
    }


def tcp_mem_pages(sockstat):
    # "TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1;" -> 1 (pages)
    for part in (sockstat or "").split(";"):
        fields = part.split()
        if fields and fields[0] == "TCP:" and "mem" in fields:
            return int(fields[fields.index("mem") + 1])
    return None


def pct_of_window(run, key):
    if run.get(key) is None or not run.get("sample_secs"):
        return None
    return 100 * run[key] / run["sample_secs"]


def figures(run, summary):
    """The figures compared for one run."""
    f = {
        "msgs_in_per_sec": summary["msgs_in_per_sec"],
        "msgs_out_per_sec": summary["msgs_out_per_sec"],
        "p50_us": summary["latency"]["p50_us"],
        "p90_us": summary["latency"]["p90_us"],
        "p99_us": summary["latency"]["p99_us"],
        "p99_9_us": summary["latency"]["p99_9_us"],
        "max_us": summary["latency"]["max_us"],
        # Open loop: how late the generator itself sent (large = it was saturated).
        "send_lag_p99_us": summary.get("send_lag", {}).get("p99_us") if summary["mode"] == "rate" else None,
        "lost": summary["lost"],
        "duplicates": summary["duplicates"],
        "reordered": summary["reordered"],
        "connected": summary["connected"],
        "connect_failed": summary["connect_failed"],
        "dropped": summary["dropped"],
        "connect_rate_per_sec": summary["connect_rate_per_sec"],
        "broker_cpu_pct": run["broker_cpu_pct"],
        # Share of the measured window the broker's / the load generator's threads sat runnable
        # waiting for a CPU (schedstat): time the shared machine's other jobs took from them.
        "broker_runq_wait_pct": pct_of_window(run, "broker_runq_wait_secs"),
        "loadgen_runq_wait_pct": pct_of_window(run, "loadgen_runq_wait_secs"),
        "steal_pct": pct_of_window(run, "steal_secs_all_cpus"),
        "loadgen_cpu_pct": 100 * summary["loadgen_cpu_secs"] / summary["wall_secs"] if summary["wall_secs"] else None,
    }
    cpu = f["broker_cpu_pct"]
    # Messages per second of broker CPU: on a shared machine where the broker does not get a
    # whole core, this is steadier than the rate itself.
    f["msgs_in_per_broker_cpu_sec"] = f["msgs_in_per_sec"] / (cpu / 100) if cpu else None
    # The same, inverted: broker CPU time per message delivered.
    f["broker_cpu_ns_per_msg_in"] = 1e9 / f["msgs_in_per_broker_cpu_sec"] if f["msgs_in_per_broker_cpu_sec"] else None
    if summary["scenario"] == "handshake":
        # Connect (TLS handshake when over TLS), CONNECT/CONNACK, DISCONNECT: once each.
        f["handshakes_per_sec"] = summary["handshakes_per_sec"]
        f["handshakes_per_broker_cpu_sec"] = summary["handshakes_per_sec"] / (cpu / 100) if cpu else None
        f["broker_cpu_us_per_handshake"] = 1e6 / f["handshakes_per_broker_cpu_sec"] if f["handshakes_per_broker_cpu_sec"] else None
        f["connect_p50_us"] = summary["connect_latency"]["p50_us"]
        f["connect_p99_us"] = summary["connect_latency"]["p99_us"]
        for k in ("msgs_in_per_sec", "msgs_out_per_sec", "msgs_in_per_broker_cpu_sec", "broker_cpu_ns_per_msg_in"):
            f[k] = None
    if summary["scenario"] == "conn" and summary["connected"]:
        grown = run["broker_rss_kb_held"] - run["broker_rss_kb_before"]
        f["broker_rss_bytes_per_conn"] = grown * 1024 / summary["connected"]
        before, held = tcp_mem_pages(run["sockstat_before"]), tcp_mem_pages(run["sockstat_held"])
        if before is not None and held is not None:
            f["sockstat_tcp_mem_bytes_per_conn_systemwide"] = (held - before) * os.sysconf("SC_PAGE_SIZE") / summary["connected"]
    return f


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(key, value):
    if value is None:
        return "-"
    if key.endswith("_us"):
        return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"
    if key.endswith("_pct"):
        return f"{value:.0f} %"
    if key.endswith("per_sec") or key.endswith("_cpu_sec"):
        return f"{value / 1000:.1f}k" if value >= 10000 else f"{value:.0f}"
    if "per_conn" in key:
        return f"{value:.0f} B"
    if key.startswith("broker_cpu_") and ("_per_msg" in key or "_per_handshake" in key):
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


# What each case is judged by, in the head-to-head table.
HEADLINE = {
    "conn": ["broker_rss_bytes_per_conn", "connect_rate_per_sec", "connected"],
    "handshake": ["handshakes_per_sec", "handshakes_per_broker_cpu_sec", "broker_cpu_us_per_handshake", "broker_cpu_pct",
                  "connect_failed"],
    "rate": ["p50_us", "p99_us", "p99_9_us", "msgs_in_per_sec", "broker_cpu_pct", "send_lag_p99_us"],
    "max": ["msgs_in_per_sec", "msgs_in_per_broker_cpu_sec", "broker_cpu_ns_per_msg_in", "p50_us", "p99_us", "broker_cpu_pct",
            "loadgen_cpu_pct"],
}
# Broker columns, in this order when present.
BROKER_ORDER = ["ringmq", "mosquitto", "rumqttd", "flashmq"]
# Headline figures where lower is better (the best peer has the least).
LOWER_IS_BETTER = ("_us", "per_conn", "_per_msg_in", "_per_handshake")


def lower_is_better(key):
    return key.endswith(LOWER_IS_BETTER)


def best_peer(medians, key):
    """The broker other than ringmq with the best median of `key`, or None."""
    peers = [(b, m.get(key)) for b, m in medians.items() if b != "ringmq" and m.get(key) is not None]
    if not peers:
        return None
    pick = min if lower_is_better(key) else max
    return pick(peers, key=lambda p: p[1])[0]


def ratios_over(medians, other):
    out = {}
    if "ringmq" in medians and other in medians:
        for k, v in medians["ringmq"].items():
            m = medians[other].get(k)
            if v is not None and m:
                out[k] = v / m
    return out


TABLE_KEYS = ["handshakes_per_sec", "handshakes_per_broker_cpu_sec", "broker_cpu_us_per_handshake", "connect_p50_us",
              "connect_p99_us", "msgs_in_per_sec", "msgs_out_per_sec", "msgs_in_per_broker_cpu_sec", "broker_cpu_ns_per_msg_in", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us",
              "send_lag_p99_us", "lost", "duplicates", "reordered", "connected", "connect_failed", "dropped", "connect_rate_per_sec",
              "broker_rss_bytes_per_conn", "sockstat_tcp_mem_bytes_per_conn_systemwide", "broker_cpu_pct",
              "loadgen_cpu_pct", "broker_runq_wait_pct", "loadgen_runq_wait_pct", "steal_pct"]


def process_case(case_dir, args, versions, mach):
    runs = [json.loads(line) for line in open(os.path.join(case_dir, "runs.jsonl")) if line.strip()]
    if not runs:
        return None
    case = runs[0]["case"]
    # Re-running the report on old runs keeps the facts of when they were measured.
    previous = os.path.join(case_dir, "run.json")
    if os.path.exists(previous):
        mach = json.load(open(previous)).get("machine", mach)
    per_broker = {}
    for run in runs:
        summary = json.load(open(os.path.join(case_dir, run["dir"], "summary.json")))
        run["figures"] = figures(run, summary)
        run["summary"] = summary
        per_broker.setdefault(run["broker"], []).append(run)
    scenario = runs[0]["summary"]["scenario"]
    kind = scenario if scenario in ("conn", "handshake") else runs[0]["summary"]["mode"]
    medians = {}
    for broker, broker_runs in per_broker.items():
        keys = broker_runs[0]["figures"].keys()
        medians[broker] = {k: median([r["figures"].get(k) for r in broker_runs]) for k in keys}
    ratios = ratios_over(medians, "mosquitto")
    headline = HEADLINE.get(kind, HEADLINE["max"])[0]
    best = best_peer(medians, headline)
    best_ratios = ratios_over(medians, best) if best else {}
    # The plot: for each broker the round whose headline figure is its median.
    plot_dirs = []
    for broker, broker_runs in per_broker.items():
        ranked = sorted(broker_runs, key=lambda r: r["figures"].get(headline) or 0)
        plot_dirs.append(os.path.join(case_dir, ranked[len(ranked) // 2]["dir"]))
    title = f"{case}: latency by percentile ({'connect' if kind in ('conn', 'handshake') else 'publish to delivery'})"
    subprocess.run([args.loadgen, "plot", "--title", title, "--out", os.path.join(case_dir, "latency.svg")] + plot_dirs,
                   check=False)
    record = {
        "case": case,
        "kind": kind,
        "quick": bool(args.quick),
        "rounds": args.rounds,
        "machine": mach,
        "versions": versions,
        "commands": {b: {"broker": rs[0]["broker_command"], "loadgen": rs[0]["loadgen_command"],
                         "broker_config": rs[0].get("broker_config")}
                     for b, rs in per_broker.items()},
        "medians": medians,
        "ratio_ringmq_over_mosquitto": ratios,
        "best_peer": best,
        "best_peer_judged_by": headline,
        "ratio_ringmq_over_best_peer": best_ratios,
        "runs": [{k: v for k, v in r.items() if k != "summary"} for r in runs],
    }
    with open(os.path.join(case_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    brokers = sorted(per_broker, key=lambda b: BROKER_ORDER.index(b) if b in BROKER_ORDER else 99)
    ratio_cols = []
    if ratios:
        ratio_cols.append(("ringmq/mosquitto", ratios))
    if best and best != "mosquitto":
        ratio_cols.append((f"ringmq/{best} (best peer)", best_ratios))
    lines = [f"# {case}", "",
             f"{'Dry run (--quick): not a measurement. ' if args.quick else ''}"
             f"Medians of {args.rounds} round(s), brokers interleaved. Machine: {mach['cpu_model']}, "
             f"{mach['cpus_online']} CPUs, kernel {mach['kernel']}; broker on cores {mach['broker_cpus']}, "
             f"load on cores {mach['load_cpus']}; commit `{mach['commit'][:12]}`.", "",
             f"Best peer by {headline}: {best or '-'}.", "",
             "| figure | " + " | ".join(brokers + [name for name, _ in ratio_cols]) + " |",
             "|---|" + "---|" * (len(brokers) + len(ratio_cols))]
    for k in TABLE_KEYS:
        if all(medians[b].get(k) is None for b in brokers):
            continue
        cells = [fmt(k, medians[b].get(k)) for b in brokers]
        cells += [f"{r[k]:.2f}" if k in r else "-" for _, r in ratio_cols]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", ""]
    for b, c in record["commands"].items():
        lines += [f"- {b}: `{c['broker']}`", f"  load: `{c['loadgen']}`"]
    lines += ["", "Per round:", ""]
    for r in runs:
        f_ = r["figures"]
        lines.append(f"- {r['broker']} round {r['round']}: in {fmt('msgs_in_per_sec', f_['msgs_in_per_sec'])}/s, "
                     f"p50 {fmt('p50_us', f_['p50_us'])}, p99 {fmt('p99_us', f_['p99_us'])}, "
                     f"broker CPU {fmt('broker_cpu_pct', f_['broker_cpu_pct'])}, "
                     f"load average before {r.get('loadavg_before', '?')} ([{r['dir']}]({r['dir']}/summary.json))")
    lines += ["", "![latency](latency.svg)", ""]
    with open(os.path.join(case_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    return record, brokers, kind, mach


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--versions", required=True)
    p.add_argument("--quick", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--broker-cpus", default="")
    p.add_argument("--load-cpus", default="")
    p.add_argument("--loadgen", required=True)
    p.add_argument("--readme", default="")
    p.add_argument("case_dirs", nargs="+")
    args = p.parse_args()
    versions = json.load(open(args.versions))
    mach = machine(args.broker_cpus, args.load_cpus)
    order = ["fanin-qos0", "pairs-qos0", "pairs-qos1", "fanout-qos0", "latency-qos0", "conn-idle",
             "fanin-qos0-v5", "pairs-qos0-v5", "pairs-qos1-v5", "pairs-qos0-tls", "pairs-qos1-tls",
             "handshake", "handshake-tls"]
    args.case_dirs.sort(key=lambda d: next((i for i, c in enumerate(order) if d.rstrip("/").endswith("-" + c)), 99))
    done_cases = []
    for case_dir in args.case_dirs:
        done = process_case(case_dir, args, versions, mach)
        if done:
            done_cases.append((case_dir, done))
    seen = {b for _, (_, brokers, _, _) in done_cases for b in brokers}
    columns = [b for b in BROKER_ORDER if b in seen] + sorted(seen - set(BROKER_ORDER))
    rows = ["| case | figure | " + " | ".join(columns) + " | ringmq/mosquitto | best peer | ringmq/best peer | run |",
            "|---|---|" + "---|" * len(columns) + "---|---|---|---|"]
    records = {record["case"]: record for _, (record, _, _, _) in done_cases}
    for case_dir, (record, brokers, kind, mach) in done_cases:
        link = os.path.basename(case_dir.rstrip("/"))
        for k in HEADLINE.get(kind, HEADLINE["max"]):
            vals = [fmt(k, record["medians"].get(b, {}).get(k)) for b in columns]
            ratio = record["ratio_ringmq_over_mosquitto"].get(k)
            best = record["best_peer"]
            best_ratio = record["ratio_ringmq_over_best_peer"].get(k)
            rows.append(f"| {record['case']} | {k} | " + " | ".join(vals) + " | "
                        f"{'-' if ratio is None else f'{ratio:.2f}'} | {best or '-'} | "
                        f"{'-' if best_ratio is None else f'{best_ratio:.2f}'} | [{link}]({link}/summary.md) |")
    header = (f"{'DRY RUN (--quick), not a measurement. ' if args.quick else ''}"
              f"{mach['cpu_model']}, {mach['cpus_online']} CPUs, kernel {mach['kernel']}, broker on cores "
              f"{mach['broker_cpus']}, load on {mach['load_cpus']}, commit `{mach['commit'][:12]}`, "
              f"{', '.join(str(versions.get(b)) for b in columns if versions.get(b))}, medians of {args.rounds} round(s).")
    # A case and its -tls twin measured in this run: what TLS costs each broker.
    tls_rows = []
    for case, tls_record in records.items():
        plain = records.get(case[:-len("-tls")]) if case.endswith("-tls") else None
        if not plain:
            continue
        # The rate, and the rate per broker CPU second (steadier on a shared machine).
        keys = HEADLINE.get(tls_record["kind"], HEADLINE["max"])[:2]
        for key in keys:
            for broker in ("ringmq", "mosquitto"):
                over, under = tls_record["medians"].get(broker, {}).get(key), plain["medians"].get(broker, {}).get(key)
                if over is not None and under:
                    tls_rows.append(f"| {case} / {plain['case']} | {key} | {broker} | {fmt(key, over)} / {fmt(key, under)} | "
                                    f"{over / under:.2f} |")
    if tls_rows:
        rows += ["", "TLS against plain TCP, same run (medians):", "",
                 "| cases | figure | broker | TLS / plain | ratio |", "|---|---|---|---|---|"] + tls_rows
    table = header + "\n\n" + "\n".join(rows) + "\n"
    print(table)
    if args.readme and os.path.exists(args.readme):
        text = open(args.readme).read()
        if BEGIN in text and END in text:
            before, rest = text.split(BEGIN, 1)
            _, after = rest.split(END, 1)
            with open(args.readme, "w") as f:
                f.write(before + BEGIN + "\n" + table + END + after)
            print(f"updated {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
