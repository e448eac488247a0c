#!/usr/bin/env bash
# Runs apply.sh and check.sh against a scratch copy of this machine's sysctls (never the real
# /proc/sys), and asserts: a dry run writes nothing, apply fixes every "off" line, a second
# apply changes nothing, --persist writes files that a rerun leaves unchanged, an absent key
# is skipped, and "<=" / ">=" fields move only in their direction.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/settings.sh
source "$script_dir/settings.sh"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export RINGMQ_SYSCTL_ROOT=$scratch/sys
export RINGMQ_SYSCTL_CONF=$scratch/etc/sysctl.d/90-ringmq.conf
export RINGMQ_LIMITS_CONF=$scratch/etc/limits.d/90-ringmq.conf

fail() {
    echo "selftest: FAILED: $*" >&2
    exit 1
}

# Copy the real values; leave conntrack out so the "absent" path runs.
while IFS='|' read -r key _; do
    [[ $key == net.netfilter.* ]] && continue
    value=$(RINGMQ_SYSCTL_ROOT=/proc/sys ringmq_sysctl_read "$key") || continue
    path=$(ringmq_sysctl_path "$key")
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$value" >"$path"
done < <(ringmq_settings)
# Fields that must not move: a port range already wider, a larger rmem max, a shorter fin timeout.
printf '1024 65535\n' >"$(ringmq_sysctl_path net.ipv4.ip_local_port_range)"
printf '4096 131072 67108864\n' >"$(ringmq_sysctl_path net.ipv4.tcp_rmem)"
printf '5\n' >"$(ringmq_sysctl_path net.ipv4.tcp_fin_timeout)"
printf '100\n' >"$(ringmq_sysctl_path net.core.somaxconn)"

mkdir -p "$scratch/etc"
snapshot() { find "$scratch/sys" "$scratch/etc" -type f -exec md5sum {} + | sort | md5sum; }

before=$(snapshot)
"$script_dir/apply.sh" --dry-run --persist >"$scratch/dry.out"
[[ $(snapshot) == "$before" ]] || fail "--dry-run wrote something"
grep -q '^net.core.somaxconn: 100 -> 65535 (dry run' "$scratch/dry.out" || fail "dry run line"
grep -q '^net.netfilter.nf_conntrack_max: absent, skipped' "$scratch/dry.out" ||
    fail "absent key not skipped"

"$script_dir/apply.sh" --persist >"$scratch/apply.out" || fail "apply.sh exited non-zero"
grep -q '^net.core.somaxconn: 100 -> 65535$' "$scratch/apply.out" || fail "somaxconn not raised"
[[ $(ringmq_sysctl_read net.ipv4.ip_local_port_range) == "1024 65535" ]] ||
    fail "a wider port range was narrowed"
[[ $(ringmq_sysctl_read net.ipv4.tcp_rmem) == "4096 16384 67108864" ]] ||
    fail "tcp_rmem: default not lowered or max lowered"
[[ $(ringmq_sysctl_read net.ipv4.tcp_fin_timeout) == 5 ]] || fail "fin timeout raised"
grep -qx -- '-net.netfilter.nf_conntrack_max = 2097152' "$RINGMQ_SYSCTL_CONF" ||
    fail "conntrack not persisted as optional"
grep -q 'nofile' "$RINGMQ_LIMITS_CONF" || fail "limits.d file"

# Every sysctl is now "ok" (RLIMIT_NOFILE and the kernel are this machine's own).
"$script_dir/check.sh" >"$scratch/check.out" || true
if grep '^off  [a-z]*\.' "$scratch/check.out"; then
    fail "check.sh still reports sysctls off after apply"
fi
grep -q '^skip net.netfilter.nf_conntrack_max' "$scratch/check.out" || fail "check skip line"

after=$(snapshot)
"$script_dir/apply.sh" --persist >"$scratch/again.out"
[[ $(snapshot) == "$after" ]] || fail "second apply changed something"
if grep -v -e '(unchanged)$' -e ': unchanged$' -e '^RLIMIT' -e '^  limits' -e 'absent, skipped' \
    "$scratch/again.out"; then
    fail "second apply reported a change"
fi
echo "selftest: 1 passed, 0 failed"
