#!/usr/bin/env bash
# Installs what the integration tests need besides Rust: the mosquitto broker (a reference the
# tests can be pointed at with RINGMQ_TEST_BROKER=mosquitto) and the mosquitto clients
# (mosquitto_pub, mosquitto_sub, mosquitto_passwd), and Eclipse Paho for Python
# (python3-paho-mqtt: tests/websocket.rs runs it over its websockets transport with
# /usr/bin/python3), and headless Chromium (chromium-headless-shell: tests/browser.rs loads
# MQTT.js into a web page that talks to the broker over WSS). Idempotent: does nothing when they
# are there.
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
# Any Chromium tests/browser.rs finds will do (it also looks for google-chrome, and takes
# RINGMQ_CHROMIUM); Debian's chromium-headless-shell is the smallest.
want_chromium=0
if ! command -v chromium-headless-shell >/dev/null 2>&1 \
    && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1 \
    && [ ! -x /usr/lib/chromium/chromium-headless-shell ] \
    && [ ! -x /usr/lib/chromium/chromium ]; then
    want_chromium=1
fi
if [ ${#need[@]} -eq 0 ] && [ "$want_chromium" -eq 0 ]; then
    echo "tests/setup.sh: mosquitto, mosquitto-clients, python3-paho-mqtt and Chromium already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/setup.sh: no apt-get here; install ${need[*]} and Chromium with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
if [ "$want_chromium" -eq 1 ]; then
    # Debian has both packages; Ubuntu has neither as a .deb (its chromium-browser is a snap).
    chromium_package=""
    for package in chromium-headless-shell chromium; do
        # Read whole first: `grep -q` quitting early would fail the pipe under pipefail.
        policy=$(apt-cache policy "$package" 2>/dev/null || true)
        if grep -q 'Candidate: [0-9]' <<<"$policy"; then
            chromium_package="$package"
            break
        fi
    done
    if [ -n "$chromium_package" ]; then
        need+=("$chromium_package")
    else
        echo "tests/setup.sh: no Chromium package here; install Chrome or Chromium and set" \
            "RINGMQ_CHROMIUM=/path/to/it for tests/browser.rs" >&2
    fi
fi
if [ ${#need[@]} -gt 0 ]; then
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The broker package may start a system service on port 1883; the tests never use it (they start
# their own brokers on ephemeral ports), so it is left alone.
echo "tests/setup.sh: installed ${need[*]:-nothing}"
