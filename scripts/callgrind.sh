#!/usr/bin/env bash
# Instructions per alloc/free pair under callgrind (repeatable where wall-clock is not): bare
# jemalloc against heapwatch over jemalloc, sampling off and at 512 KiB, for a few sizes.
# Counts only inside the measured loop (run_pairs), divided by the number of pairs.
#
#   scripts/callgrind.sh [PAIRS]      # default 200000
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-200000}"
command -v valgrind >/dev/null || { echo "error: valgrind is not installed (Debian package valgrind)" >&2; exit 1; }
cargo build --quiet --profile bench --example callgrind_bare --example callgrind_heapwatch
out=$(mktemp -d)
count() {  # binary args... -> instructions per pair
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" --toggle-collect='*run_pairs*' \
        "$@" >/dev/null 2>"$out/log"
    local total
    total=$(sed -n 's/^summary: //p' "$out/cg.out" | awk '{print $1}')
    # The warm-up call (1000 pairs) is counted too.
    awk -v t="$total" -v n="$pairs" 'BEGIN { printf "%.1f", t / (n + 1000) }'
}
echo "| size | bare jemalloc | heapwatch, sampling off | heapwatch, 512 KiB | added (off) | added (512 KiB) |"
echo "|---:|---:|---:|---:|---:|---:|"
for size in 16 256 4096; do
    bare=$(count target/release/examples/callgrind_bare "$pairs" "$size")
    off=$(count target/release/examples/callgrind_heapwatch "$pairs" "$size" 0)
    on=$(count target/release/examples/callgrind_heapwatch "$pairs" "$size" 524288)
    awk -v s="$size" -v b="$bare" -v o="$off" -v r="$on" \
        'BEGIN { printf "| %d B | %.1f | %.1f | %.1f | %+.1f | %+.1f |\n", s, b, o, r, o - b, r - b }'
done
rm -rf "$out"
