#!/usr/bin/env bash
# Applies the sysctl settings a million connections need (README.md beside this file says why).
#
#   tuning/apply.sh             set them now (root), printing "key: before -> after"
#   tuning/apply.sh --dry-run   print what would change, write nothing
#   tuning/apply.sh --persist   also write /etc/sysctl.d/90-ringmq.conf and
#                               /etc/security/limits.d/90-ringmq.conf so they survive a reboot
#
# Idempotent: a value already good enough is left alone ("unchanged"); a ">=" setting is only
# ever raised and a "<=" setting only lowered. Keys this kernel lacks are skipped with a note.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/settings.sh
source "$script_dir/settings.sh"

dry_run=0
persist=0
sysctl_conf=${RINGMQ_SYSCTL_CONF:-/etc/sysctl.d/90-ringmq.conf}
limits_conf=${RINGMQ_LIMITS_CONF:-/etc/security/limits.d/90-ringmq.conf}

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "$0"
}

for arg in "$@"; do
    case $arg in
        --dry-run | -n) dry_run=1 ;;
        --persist) persist=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "apply.sh: unknown argument '$arg'" >&2
            usage >&2
            exit 2
            ;;
    esac
done

# A scratch RINGMQ_SYSCTL_ROOT (selftest.sh) needs no root.
if ((!dry_run)) && ((EUID != 0)) && [[ -z ${RINGMQ_SYSCTL_ROOT:-} ]]; then
    echo "apply.sh: changing sysctls needs root: run it with sudo, or pass --dry-run" >&2
    exit 1
fi

failed=0
persist_lines=()

while IFS='|' read -r key wanted comparisons mode; do
    [[ -n $key ]] || continue
    [[ $mode != check-only ]] || continue
    # "-key" tells systemd-sysctl to ignore a key that is absent at boot (conntrack loads late).
    persist_key=$key
    [[ $key == net.netfilter.* || $key == kernel.io_uring_disabled ]] && persist_key="-$key"
    if ! before=$(ringmq_sysctl_read "$key"); then
        case $key in
            net.netfilter.*) note="conntrack is not loaded; if it is loaded later, run this again" ;;
            kernel.io_uring_disabled) note="kernels before 6.6 have no such switch: io_uring is on" ;;
            *) note="not on this kernel" ;;
        esac
        echo "$key: absent, skipped ($note)"
        persist_lines+=("-$key = $wanted")
        continue
    fi
    after=$(ringmq_target "$before" "$wanted" "$comparisons")
    persist_lines+=("$persist_key = $after")
    if [[ $before == "$after" ]]; then
        echo "$key: $before -> $after (unchanged)"
    elif ((dry_run)); then
        echo "$key: $before -> $after (dry run, not written)"
    elif printf '%s\n' "$after" >"$(ringmq_sysctl_path "$key")" 2>/dev/null; then
        echo "$key: $before -> $(ringmq_sysctl_read "$key")"
    else
        echo "$key: $before -> $after FAILED (read-only /proc/sys? a container? set it on the host)" >&2
        failed=1
    fi
done < <(ringmq_settings)

nofile_soft=$(ulimit -Sn)
nofile_hard=$(ulimit -Hn)
echo "RLIMIT_NOFILE (this shell): soft $nofile_soft, hard $nofile_hard;" \
    "ringmq wants >= $RINGMQ_NOFILE_MIN per ring, mosquitto wants more than its connection count"
echo "  limits are per process: set them where the broker starts (ulimit -n, limits.d, or" \
    "LimitNOFILE= in a systemd unit; see README.md)"

if ((persist)); then
    sysctl_text="# Written by ringmq tuning/apply.sh --persist; see tuning/README.md.
$(printf '%s\n' "${persist_lines[@]}")"
    limits_text="# Written by ringmq tuning/apply.sh --persist; see tuning/README.md.
# Open files: ringmq needs $RINGMQ_NOFILE_MIN per ring; mosquitto (compared in bench/) needs one
# per connection. Locked memory matters only for io_uring on kernels before 5.12.
*    soft nofile   1048576
*    hard nofile   1048576
root soft nofile   1048576
root hard nofile   1048576
*    soft memlock  unlimited
*    hard memlock  unlimited"
    for target in "$sysctl_conf" "$limits_conf"; do
        if [[ $target == "$sysctl_conf" ]]; then text=$sysctl_text; else text=$limits_text; fi
        if [[ -f $target ]] && [[ $(cat "$target") == "$text" ]]; then
            echo "$target: unchanged"
        elif ((dry_run)); then
            echo "$target: would write (dry run):"
            printf '%s\n' "$text" | sed 's/^/    /'
        elif mkdir -p "$(dirname "$target")" && printf '%s\n' "$text" >"$target"; then
            echo "$target: written"
        else
            echo "$target: could not write" >&2
            failed=1
        fi
    done
fi

exit "$failed"
