#!/usr/bin/env python3
"""Broker memory per retained message: starts a fresh broker (ringmq with --shards S, or
mosquitto), samples its VmRSS, publishes N retained messages (QoS 0 as fast as Paho sends them,
or with --qos 1 about 20 in flight; 16-byte payloads, topics bench/retained/<i>) from one Paho
client, ends with a QoS 1 one whose PUBACK follows them all, waits 2 s, samples again and prints
the RSS growth per message. ringmq keeps a replica of every retained message on every shard (a
new subscription is answered by its own shard; the message itself is one allocation they
share), so the figure grows with the shards.

Usage: bench/retained.py [--broker ringmq|mosquitto] [--shards S] [--messages N] [--qos 0|1]
                         [--port P]
Environment: RINGMQ_BIN (default target/release/ringmq), BROKER_CPUS (default 1).
Needs python3-paho-mqtt (tests/setup.sh installs it) and, for --broker mosquitto, mosquitto.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import paho.mqtt.client as mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start(args, work):
    cpus = os.environ.get("BROKER_CPUS", "1")
    if args.broker == "mosquitto":
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {args.port} 127.0.0.1\nallow_anonymous true\n"
                    "persistence false\nlog_dest none\n")
        cmd = ["taskset", "-c", cpus, "mosquitto", "-c", conf]
    else:
        conf = os.path.join(work, "ringmq.toml")
        with open(conf, "w") as f:
            f.write(f'listen = "127.0.0.1:{args.port}"\nshards = {args.shards}\n'
                    "sys_interval_secs = 0\n")
        binary = os.environ.get("RINGMQ_BIN", os.path.join(ROOT, "target/release/ringmq"))
        cmd = ["taskset", "-c", cpus, binary, "--config", conf]
    broker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if broker.poll() is not None:
        sys.exit(f"retained.py: {' '.join(cmd)} exited with {broker.returncode}")
    return broker, cmd


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["ringmq", "mosquitto"], default="ringmq")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0,
                        help="1: at most Paho's 20 in flight, so the broker never holds a burst")
    parser.add_argument("--port", type=int, default=20_000 + os.getpid() % 20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringmq-retained.") as work:
        broker, cmd = start(args, work)
        try:
            before = rss_bytes(broker.pid)
            client = mqtt.Client(client_id="retained-bench", protocol=mqtt.MQTTv311)
            client.connect("127.0.0.1", args.port)
            client.loop_start()
            payload = b"x" * 16
            for i in range(args.messages):
                sent = client.publish(f"bench/retained/{i}", payload, qos=args.qos, retain=True)
                if args.qos == 1 and i % 20 == 19:
                    sent.wait_for_publish(60)  # about 20 in flight at most
                elif i % 1000 == 999:
                    time.sleep(0.01)  # Paho's queue, not the broker, would hold the rest
            last = client.publish("bench/retained/last", payload, qos=1, retain=True)
            last.wait_for_publish(120)
            if not last.is_published():
                sys.exit("retained.py: the last PUBLISH got no PUBACK in 120 s")
            time.sleep(2.0)
            after = rss_bytes(broker.pid)
            client.loop_stop()
            client.disconnect()
        finally:
            broker.terminate()
            broker.wait()
    label = args.broker if args.broker == "mosquitto" else f"ringmq {args.shards} shard(s)"
    print(f"{label}: {args.messages} retained messages at QoS {args.qos}, RSS {before // 1024} -> "
          f"{after // 1024} kB: {(after - before) / args.messages:.0f} B per message")
    print(f"  broker: {' '.join(cmd)}")


if __name__ == "__main__":
    main()
