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

# The free path's cache misses on realistic work (issue 14): the bench suite's JSON parse, map
# build and request handling, under callgrind's cache simulation (its default: the host's L1 and
# last-level cache geometry). Data-read misses in all, and those on the lines of heapwatch's
# allocation and free paths (src/alloc.rs, thread_state.rs, counters.rs, filter.rs: the countdown,
# the counters, the free gate and the sampled-address bitmap).
rounds="${REALISTIC_ROUNDS:-5}"
cache() {  # binary args... -> "instructions, data reads, D1 and LL read misses, D1 read misses on heapwatch's lines"
    valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out/cache.out" \
        --toggle-collect='*run_realistic*' "$@" >/dev/null 2>"$out/log"
    local totals ours
    totals=$(callgrind_annotate --show=Ir,Dr,D1mr,DLmr "$out/cache.out" 2>/dev/null |
        awk '/PROGRAM TOTALS/ { gsub(",", ""); gsub(/\([^)]*\)/, ""); print $1, $2, $3, $4; exit }')
    ours=$(callgrind_annotate --show=D1mr --auto=no "$out/cache.out" 2>/dev/null |
        awk '$2 ~ /^src\/(alloc|thread_state|counters|filter)\.rs:/ { gsub(",", "", $1); s += $1 } END { print s + 0 }')
    echo "$totals $ours"
}
mkdir -p "$out"
echo
echo "Realistic workloads ($rounds rounds of JSON parse + map build + request handling), callgrind cache simulation:"
echo
echo "| configuration | instructions | data reads | D1 read misses | LL read misses | D1 read misses on heapwatch's lines |"
echo "|---|---:|---:|---:|---:|---:|"
for config in "bare jemalloc|target/release/examples/callgrind_bare $rounds realistic" \
    "heapwatch, 512 KiB|target/release/examples/callgrind_heapwatch $rounds realistic 524288"; do
    read -r ir dr d1 ll ours <<<"$(cache ${config#*|})"
    echo "| ${config%%|*} | $ir | $dr | $d1 | $ll | $ours |"
done
rm -rf "$out"
