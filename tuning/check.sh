#!/usr/bin/env bash
# Checks this machine for a million connections (README.md beside this file says why), one line
# per setting:
#   ok   key = value
#   off  key = value (want >= X): sysctl -w key=X
#   skip key (absent on this kernel: ...)
#   warn ...          (works, but not at its best)
# Exits non-zero when any line is "off". Reads only; tuning/apply.sh changes things.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tuning/settings.sh
source "$script_dir/settings.sh"

off=0

while IFS='|' read -r key wanted comparisons _; do
    [[ -n $key ]] || continue
    if ! value=$(ringmq_sysctl_read "$key"); then
        case $key in
            net.netfilter.*) echo "skip $key (conntrack not loaded: nothing to track)" ;;
            kernel.io_uring_disabled) echo "skip $key (kernel before 6.6: io_uring always on)" ;;
            *) echo "skip $key (absent on this kernel)" ;;
        esac
        continue
    fi
    target=$(ringmq_target "$value" "$wanted" "$comparisons")
    if [[ $value == "$target" ]]; then
        echo "ok   $key = $value"
    else
        fix="sysctl -w $key=$target"
        [[ $target == *" "* ]] && fix="sysctl -w $key=\"$target\""
        echo "off  $key = $value (want $(ringmq_describe "$wanted" "$comparisons")): $fix"
        off=1
    fi
done < <(ringmq_settings)

# RLIMIT_NOFILE: the soft limit is what the kernel compares each ring's fixed-file table with.
nofile=$(ulimit -Sn)
nofile_hard=$(ulimit -Hn)
if [[ $nofile == unlimited ]] || ((nofile >= RINGMQ_NOFILE_MIN)); then
    echo "ok   RLIMIT_NOFILE = $nofile (hard $nofile_hard)"
else
    echo "off  RLIMIT_NOFILE = $nofile (hard $nofile_hard) (want >= $RINGMQ_NOFILE_MIN):" \
        "ulimit -n $RINGMQ_NOFILE_MIN, or LimitNOFILE=$RINGMQ_NOFILE_MIN in the systemd unit"
    off=1
fi

# io_uring may also be limited to one group (io_uring_disabled=1 plus kernel.io_uring_group).
if group=$(ringmq_sysctl_read kernel.io_uring_group) && [[ $group != -1 ]]; then
    echo "warn kernel.io_uring_group = $group (only that group may use io_uring when" \
        "io_uring_disabled = 1)"
fi

# Kernel: compare major.minor numerically.
release=$(uname -r)
version=${release%%[!0-9.]*}
IFS=. read -r major minor _ <<<"$version"
kernel_number=$((major * 1000 + ${minor:-0}))
IFS=. read -r min_major min_minor <<<"$RINGMQ_KERNEL_MIN"
IFS=. read -r best_major best_minor <<<"$RINGMQ_KERNEL_BEST"
if ((kernel_number < min_major * 1000 + min_minor)); then
    echo "off  kernel = $release (want >= $RINGMQ_KERNEL_MIN: multishot recv, MSG_RING fd" \
        "passing, buffer rings): upgrade the kernel"
    off=1
elif ((kernel_number < best_major * 1000 + best_minor)); then
    echo "warn kernel = $release (>= $RINGMQ_KERNEL_BEST adds IORING_SETUP_DEFER_TASKRUN;" \
        "ringmq runs without it)"
else
    echo "ok   kernel = $release"
fi

exit "$off"
