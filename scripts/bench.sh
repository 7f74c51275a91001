#!/usr/bin/env bash
# The overhead suite: every allocator configuration — the bare allocators, heapwatch over each,
# and the peers a user could pick instead — on the same workloads, in alternating rounds so a
# noisy stretch of the machine hits all of them alike; then the peak RSS of each configuration
# on the realistic workloads, the cost of a dump, and one table (medians over the rounds,
# ratios to bare jemalloc).
#
#   scripts/bench.sh [ROUNDS] [criterion filter]      # default 3 rounds, all workloads
#   FRAME_POINTERS=1 scripts/bench.sh                 # build with -C force-frame-pointers=yes
#   BENCHES="bare_jemalloc heapwatch_jemalloc" scripts/bench.sh   # some configurations only
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-3}"
filter="${2:-}"
target_dir="$PWD/target"
if [[ "${FRAME_POINTERS:-0}" == 1 ]]; then
    export RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
    target_dir="$PWD/target/frame-pointers"
fi
export CARGO_TARGET_DIR="$target_dir"
rounds_dir="$target_dir/bench-rounds"
rm -rf "$rounds_dir" "$target_dir/criterion"
mkdir -p "$rounds_dir"

# bench binary -> the configurations it measures.
declare -A configs=(
    [bare_jemalloc]="jemalloc"
    [bare_system]="system"
    [heapwatch_jemalloc]="heapwatch_jemalloc_off heapwatch_jemalloc_512k heapwatch_jemalloc_64k"
    [heapwatch_system]="heapwatch_system_off heapwatch_system_512k heapwatch_system_64k"
    [peer_cap]="cap"
    [peer_re_memory]="re_memory"
    [peer_dhat]="dhat"
    [jemalloc_prof]="jemalloc_prof"
)
benches=(${BENCHES:-bare_jemalloc heapwatch_jemalloc bare_system heapwatch_system peer_cap jemalloc_prof peer_re_memory peer_dhat})

# Peers that live in crates of their own (see their Cargo.toml for why).
declare -A peer_crates=(
    [jemalloc_prof]="peers/jemalloc-prof"
    [peer_re_memory]="peers/re-memory"
)
bench() {
    local name="$1"
    shift
    if [[ -n "${peer_crates[$name]:-}" ]]; then
        cargo bench --quiet --manifest-path "${peer_crates[$name]}/Cargo.toml" --bench "$name" "$@"
    else
        cargo bench --quiet --bench "$name" "$@"
    fi
}

echo "building…" >&2
main_benches=()
for name in "${benches[@]}"; do
    if [[ -n "${peer_crates[$name]:-}" ]]; then
        cargo bench --no-run --quiet --manifest-path "${peer_crates[$name]}/Cargo.toml"
    else
        main_benches+=("--bench=$name")
    fi
done
cargo bench --no-run --quiet "${main_benches[@]}" --bench=dump_cost

for round in $(seq 1 "$rounds"); do
    order=("${benches[@]}")
    if (( round % 2 == 0 )); then
        # Reverse every other round so no configuration always runs first.
        order=($(printf '%s\n' "${benches[@]}" | tac))
    fi
    for name in "${order[@]}"; do
        echo "round $round/$rounds: $name" >&2
        bench "$name" -- --noplot ${filter:+"$filter"} >/dev/null 2>&1
    done
    mkdir -p "$rounds_dir/$round"
    cp -r "$target_dir/criterion/." "$rounds_dir/$round/"
done

echo "peak RSS…" >&2
for name in "${benches[@]}"; do
    for config in ${configs[$name]}; do
        for workload in json_parse_drop btreemap_build_sort_drop request_tokenise_sort_format; do
            kib=$(HEAPWATCH_BENCH_PEAK_RSS="$config/$workload" bench "$name" 2>/dev/null |
                sed -n 's/^peak_rss_kib=//p')
            echo "$config $workload ${kib:-?}" >>"$rounds_dir/peak_rss.txt"
        done
    done
done

cargo run --quiet --release --example bench_table -- "$rounds_dir"
if [[ -z "$filter" ]]; then
    # A filtered run is a targeted comparison of some workloads; the dump's cost goes with the
    # whole suite.
    echo "Cost of a snapshot and of a dump set:"
    echo
    cargo bench --quiet --bench dump_cost 2>/dev/null
fi
