#!/usr/bin/env bash
# Installs what the integration tests need besides Rust: the mosquitto broker (a reference the
# tests can be pointed at with RINGMQ_TEST_BROKER=mosquitto) and the mosquitto clients
# (mosquitto_pub, mosquitto_sub, mosquitto_passwd), and Eclipse Paho for Python
# (python3-paho-mqtt: tests/websocket.rs runs it over its websockets transport with
# /usr/bin/python3). Idempotent: does nothing when they are there.
set -euo pipefail

need=()
for tool in mosquitto_pub mosquitto_sub mosquitto_passwd; do
    command -v "$tool" >/dev/null 2>&1 || need=(mosquitto-clients)
done
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    need+=(mosquitto)
fi
if ! /usr/bin/python3 -c "import paho.mqtt" >/dev/null 2>&1; then
    need+=(python3-paho-mqtt)
fi
if [ ${#need[@]} -eq 0 ]; then
    echo "tests/setup.sh: mosquitto, mosquitto-clients and python3-paho-mqtt already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/setup.sh: no apt-get here; install ${need[*]} with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
# The broker package may start a system service on port 1883; the tests never use it (they start
# their own brokers on ephemeral ports), so it is left alone.
echo "tests/setup.sh: installed ${need[*]}"
