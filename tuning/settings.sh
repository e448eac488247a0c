# shellcheck shell=bash
# The sysctl settings a million MQTT connections on one box need, shared by apply.sh and check.sh.
# Sourced, not run. README.md beside this file explains each value.
#
# Each entry: key, wanted value, and one comparison per field:
#   >=  the field must be at least the wanted value (apply.sh raises it, never lowers it)
#   <=  the field must be at most the wanted value (apply.sh lowers it, never raises it)
#   ==  the field must equal the wanted value
# A multi-field key (tcp_mem, ip_local_port_range) has one comparison per field. A fourth field
# "check-only" marks a key check.sh reports but apply.sh leaves alone.

# tcp_mem is in pages and scales with RAM: max = a third of RAM, pressure = 3/4 of max,
# min = 1/2 of max. That is the budget for data queued in sockets, not for the sockets themselves.
ringmq_tcp_mem() {
    local mem_kib page_kib max_pages
    mem_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    page_kib=$(($(getconf PAGESIZE) / 1024))
    max_pages=$((mem_kib / page_kib / 3))
    echo "$((max_pages / 2)) $((max_pages * 3 / 4)) ${max_pages}"
}

# Prints "key|wanted|comparisons[|check-only]" lines.
ringmq_settings() {
    cat <<EOF
fs.file-max|4194304|>=
fs.nr_open|2097152|>=
net.core.somaxconn|65535|>=
net.ipv4.tcp_max_syn_backlog|65535|>=
net.core.netdev_max_backlog|16384|>=
net.ipv4.ip_local_port_range|10000 65535|<= >=
net.ipv4.tcp_mem|$(ringmq_tcp_mem)|>= >= >=
net.ipv4.tcp_rmem|4096 16384 16777216|>= <= >=
net.ipv4.tcp_wmem|4096 16384 16777216|>= <= >=
net.netfilter.nf_conntrack_max|2097152|>=
net.ipv4.tcp_max_tw_buckets|2097152|>=
net.ipv4.tcp_fin_timeout|15|<=
kernel.io_uring_disabled|0|==
vm.max_map_count|65530|>=|check-only
EOF
}

# The open-file soft limit a ringmq process needs: each ring's fixed-file table holds at most
# this many connections (the kernel checks RLIMIT_NOFILE per ring), so more rings per shard make
# up for a lower limit. 20,000 is what the design sizes rings for.
# shellcheck disable=SC2034 # read by apply.sh and check.sh
RINGMQ_NOFILE_MIN=20000

# Oldest kernel with everything ringmq's ring driver uses: multishot accept with
# IORING_FILE_INDEX_ALLOC and provided-buffer rings (5.19), multishot recv, single issuer and
# MSG_RING fd passing (6.0). DEFER_TASKRUN (6.1) is used when present.
# shellcheck disable=SC2034 # read by apply.sh and check.sh
RINGMQ_KERNEL_MIN=6.0
# shellcheck disable=SC2034 # read by apply.sh and check.sh
RINGMQ_KERNEL_BEST=6.1

# RINGMQ_SYSCTL_ROOT points the scripts at a copy of /proc/sys (selftest.sh uses one).
ringmq_sysctl_path() {
    echo "${RINGMQ_SYSCTL_ROOT:-/proc/sys}/${1//.//}"
}

# Current value with runs of blanks squeezed to one space; fails when the key is absent.
ringmq_sysctl_read() {
    local path
    path=$(ringmq_sysctl_path "$1")
    [[ -r $path ]] || return 1
    tr -s ' \t' '  ' <"$path"
}

# The value that satisfies every comparison, moving each field of the current value as little
# as possible: "current|wanted|comparisons" -> target.
ringmq_target() {
    local current=$1 wanted=$2 comparisons=$3
    local -a cur want ops out
    read -r -a cur <<<"$current"
    read -r -a want <<<"$wanted"
    read -r -a ops <<<"$comparisons"
    local i
    for i in "${!want[@]}"; do
        local c=${cur[$i]:-${want[$i]}} w=${want[$i]} op=${ops[$i]:-${ops[0]}}
        case $op in
            '>=') if ((c >= w)); then out+=("$c"); else out+=("$w"); fi ;;
            '<=') if ((c <= w)); then out+=("$c"); else out+=("$w"); fi ;;
            '==') out+=("$w") ;;
            *)
                echo "settings.sh: unknown comparison '$op'" >&2
                return 1
                ;;
        esac
    done
    echo "${out[*]}"
}

# Human form of what is wanted: ">= 65535", "<= 1024 >= 65535".
ringmq_describe() {
    local wanted=$1 comparisons=$2
    local -a want ops
    read -r -a want <<<"$wanted"
    read -r -a ops <<<"$comparisons"
    local i text="" same=1
    for i in "${!ops[@]}"; do
        [[ ${ops[$i]} == "${ops[0]}" ]] || same=0
    done
    if ((same)); then
        echo "${ops[0]} ${want[*]}"
        return
    fi
    for i in "${!want[@]}"; do
        text+="${text:+ }${ops[$i]:-${ops[0]}} ${want[$i]}"
    done
    echo "$text"
}
