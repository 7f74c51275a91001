#!/usr/bin/env bash
# Runs every allocator configuration's bench binary, alternating them for several rounds so that
# a noisy stretch of the machine hits all of them alike, then prints one table (medians over the
# rounds, ratios to the bare allocators).
#
#   scripts/bench.sh [ROUNDS] [criterion filter]      # default 2 rounds, all workloads
#   FRAME_POINTERS=1 scripts/bench.sh                 # build with -C force-frame-pointers=yes
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-2}"
filter="${2:-}"
target_dir=target
if [[ "${FRAME_POINTERS:-0}" == 1 ]]; then
    export RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
    target_dir=target/frame-pointers
fi
export CARGO_TARGET_DIR="$target_dir"
rounds_dir="$target_dir/bench-rounds"
rm -rf "$rounds_dir"

benches=(bare_jemalloc heapwatch_jemalloc bare_system heapwatch_system)
cargo bench --no-run "${benches[@]/#/--bench=}" >/dev/null
for round in $(seq 1 "$rounds"); do
    # Reverse the order every other round so no configuration always runs first.
    order=("${benches[@]}")
    if (( round % 2 == 0 )); then
        order=(heapwatch_system bare_system heapwatch_jemalloc bare_jemalloc)
    fi
    for bench in "${order[@]}"; do
        echo "round $round/$rounds: $bench" >&2
        cargo bench --bench "$bench" -- --noplot ${filter:+"$filter"} >/dev/null 2>&1
    done
    mkdir -p "$rounds_dir/$round"
    cp -r "$target_dir/criterion/." "$rounds_dir/$round/"
done
cargo run --quiet --release --example bench_table -- "$rounds_dir"
