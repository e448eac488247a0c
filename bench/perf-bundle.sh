#!/usr/bin/env bash
# Packs this machine's perf with the shared libraries it loads into DIR, for a machine that has
# no perf and no package registry (the lent 16-core machine): DIR/perf runs it with those
# libraries, so `PATH=DIR:$PATH bench/bigbox.sh` gets its profile step there. Both machines
# must run the same C library generation (Debian 12 here); the kernel's perf events may differ
# (a VM without a PMU samples the cpu-clock, as on the dev VM).
#
# Usage: bench/perf-bundle.sh DIR      (about 35 MB; e.g. DIR = .dev/perf, carried with the run)
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,/^set /{/^#/p}' "$0"; exit 2; }
dir="$1"
perf="$(command -v perf)" || { echo "perf-bundle.sh: no perf here (Debian: linux-perf)" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir/lib"
cp -L "$perf" "$dir/perf.bin"
# Every library the dynamic loader resolves for it, but the loader itself and the C library's
# core (the target's own must serve its other programs' ABI too).
ldd "$perf" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
        libc.so.*|libm.so.*|ld-linux*) ;;
        *) cp -L "$lib" "$dir/lib/" ;;
    esac
done
cat > "$dir/perf" <<'EOF'
#!/bin/sh
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf.bin" "$@"
EOF
chmod +x "$dir/perf" "$dir/perf.bin"
du -sh "$dir" | cut -f1 | sed "s|^|perf-bundle.sh: $dir: |" >&2
