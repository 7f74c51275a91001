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
# The last column: at 512 KiB inside an entered tracing span with `heapwatch::SpanLayer`
# installed: the span tag is read only on the sampled path, so it equals the column
# before it.
echo "| size | bare jemalloc | heapwatch, sampling off | heapwatch, 512 KiB | added (off) | added (512 KiB) | 512 KiB in a span, SpanLayer |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for size in 16 256 4096; do
    bare=$(count target/release/examples/callgrind_bare "$pairs" "$size")
    off=$(count target/release/examples/callgrind_heapwatch "$pairs" "$size" 0)
    on=$(count target/release/examples/callgrind_heapwatch "$pairs" "$size" 524288)
    span=$(count target/release/examples/callgrind_heapwatch "$pairs" "$size" 524288 span)
    awk -v s="$size" -v b="$bare" -v o="$off" -v r="$on" -v p="$span" \
        'BEGIN { printf "| %d B | %.1f | %.1f | %.1f | %+.1f | %+.1f | %.1f |\n", s, b, o, r, o - b, r - b, p }'
done

# The free path's cache misses on realistic work (issue 14): the bench suite's JSON parse, map
# build and request handling, under callgrind's cache simulation (its default: the host's L1 and
# last-level cache geometry). heapwatch's share is what it adds over bare jemalloc on the same
# work (a load that misses is attributed to the inlined std line that performs it, so per-line
# attribution does not single heapwatch out); per 1,000 frees, counted by heapwatch itself.
rounds="${REALISTIC_ROUNDS:-5}"
cache() {  # binary args... -> "instructions, data reads, D1 read misses, LL read misses"
    valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out/cache.out" \
        --toggle-collect='*run_realistic*' "$@" >/dev/null 2>"$out/log"
    callgrind_annotate --show=Ir,Dr,D1mr,DLmr "$out/cache.out" 2>/dev/null |
        awk '/PROGRAM TOTALS/ { gsub(",", ""); gsub(/\([^)]*\)/, ""); print $1, $2, $3, $4; exit }'
}
frees=$(target/release/examples/callgrind_heapwatch "$rounds" realistic 524288 | sed -n 's/^frees=//p')
read -r bare_ir bare_dr bare_d1 bare_ll <<<"$(cache target/release/examples/callgrind_bare "$rounds" realistic)"
read -r off_ir off_dr off_d1 off_ll <<<"$(cache target/release/examples/callgrind_heapwatch "$rounds" realistic 0)"
read -r hw_ir hw_dr hw_d1 hw_ll <<<"$(cache target/release/examples/callgrind_heapwatch "$rounds" realistic 524288)"
echo
echo "Realistic workloads ($rounds rounds of JSON parse + map build + request handling: $frees frees), callgrind cache simulation:"
echo
echo "| configuration | instructions | data reads | D1 read misses | LL read misses |"
echo "|---|---:|---:|---:|---:|"
echo "| bare jemalloc | $bare_ir | $bare_dr | $bare_d1 | $bare_ll |"
echo "| heapwatch, sampling off | $off_ir | $off_dr | $off_d1 | $off_ll |"
echo "| heapwatch, 512 KiB | $hw_ir | $hw_dr | $hw_d1 | $hw_ll |"
added() {  # label ir dr d1 ll
    awk -v label="$1" -v f="$frees" -v i="$(($2 - bare_ir))" -v r="$(($3 - bare_dr))" -v d="$(($4 - bare_d1))" -v l="$(($5 - bare_ll))" \
        'BEGIN { printf "| %s, added per 1,000 frees | %+.0f | %+.0f | %+.1f | %+.2f |\n", label, i * 1000 / f, r * 1000 / f, d * 1000 / f, l * 1000 / f }'
}
added "sampling off" "$off_ir" "$off_dr" "$off_d1" "$off_ll"
added "512 KiB" "$hw_ir" "$hw_dr" "$hw_d1" "$hw_ll"
rm -rf "$out"
