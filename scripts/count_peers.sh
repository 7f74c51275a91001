#!/usr/bin/env bash
# Time per measured iteration of the five workloads of tests/counts_agree.rs under heapwatch,
# dhat and stats_alloc, each the sole global allocator of its own process, beside the same
# workloads under plain System; prints one Markdown table.
#
#   scripts/count_peers.sh            # 5 repetitions, on CPU 0
#   REPEATS=5 CPU=1 scripts/count_peers.sh
#
# Each example times every function in 11 rounds of measured and bare iterations, in thread CPU
# time, and prints the medians (tools/count_peers/timing.rs). The four processes run one at a
# time, never side by side (they would share the cores they are timed on), and the whole set is
# repeated REPEATS times in rotation. Each cell is the lowest of its repetitions' medians: on a
# small shared VM whole processes run slow (up to 2x, every function alike, whichever tool:
# what shares the host's cores at the time), and that only ever adds time, so the least
# disturbed repetition is the best estimate of each tool's own cost. The widest spread of one
# cell over the repetitions is printed under the table.
#
# Built with the bench profile (fat LTO, one codegen unit; see Cargo.toml): the five workloads
# are the same source in four binaries, and with several codegen units how they are inlined
# depends on how each binary happens to be split, which moves them by more than the counters
# cost.
set -euo pipefail
cd "$(dirname "$0")/.."

repeats="${REPEATS:-5}"
# Every process on the same CPU: on a small shared VM the CPUs differ in speed from run to run
# (what shares their cores), and a process that lands on the slower one moves a whole column.
pin=()
if command -v taskset >/dev/null; then
    pin=(taskset -c "${CPU:-0}")
fi
tools=(system heapwatch dhat stats_alloc)

cargo build --profile bench --quiet \
    --example count_peers_system --example count_peers_heapwatch \
    --example count_peers_dhat --example count_peers_stats_alloc
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
examples="$target_dir/release/examples" # the bench profile builds into release/

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((rep = 0; rep < repeats; rep++)); do
    for ((i = 0; i < ${#tools[@]}; i++)); do
        # Rotate the order each repetition.
        tool=${tools[$(((i + rep) % ${#tools[@]}))]}
        echo "repetition $((rep + 1))/$repeats: $tool" >&2
        "${pin[@]}" "$examples/count_peers_$tool" | grep '^ROW' >>"$out/rows"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The lowest over the repetitions, and each cell's spread (max / min): tool, function,
# m(easured) or b(are), lowest ns, spread.
awk -F'\t' '{ print $2 "\t" $3 "\tm\t" $6; print $2 "\t" $3 "\tb\t" $7 }' "$out/rows" |
    sort -t$'\t' -k1,1 -k2,2 -k3,3 -k4,4g |
    awk -F'\t' '
        function flush() {
            if (n) print key "\t" v[1] "\t" (v[1] > 0 ? v[n] / v[1] : 1)
            n = 0
        }
        { k = $1 "\t" $2 "\t" $3; if (k != key) { flush(); key = k }; v[++n] = $4 }
        END { flush() }' >"$out/cells"

# The table: rows in the order heapwatch printed them; blocks and bytes as heapwatch counted
# them, checked against dhat's (blocks, bytes) and stats_alloc's (blocks) in their own processes.
awk -F'\t' -v cells="$out/cells" -v repeats="$repeats" '
    function ns(x) { return x >= 100 ? sprintf("%.0f", x) : sprintf("%.1f", x) }
    function cell(tool, f) {
        if (!((tool, f, "m") in med)) return "—"
        if (tool == "system") return ns(med[tool, f, "b"])
        return ns(med[tool, f, "m"]) " (" ns(med[tool, f, "b"]) ")"
    }
    BEGIN {
        while ((getline line < cells) > 0) {
            split(line, p, "\t")
            med[p[1], p[2], p[3]] = p[4]
            if (p[5] > widest) { widest = p[5]; widest_cell = p[1] " " p[2] (p[3] == "m" ? " measured" : " bare") }
        }
    }
    $2 == "heapwatch" && !($3 in seen) { seen[$3] = 1; order[++count] = $3 }
    { blocks[$2, $3] = $4; bytes[$2, $3] = $5 }
    END {
        print "| function | blocks | bytes | heapwatch ns | dhat ns | stats_alloc ns | bare ns |"
        print "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= count; i++) {
            f = order[i]
            print "| " f " | " blocks["heapwatch", f] " | " bytes["heapwatch", f] " | " \
                cell("heapwatch", f) " | " cell("dhat", f) " | " cell("stats_alloc", f) " | " \
                cell("system", f) " |"
            if (("dhat", f) in blocks && (blocks["dhat", f] != blocks["heapwatch", f] || bytes["dhat", f] != bytes["heapwatch", f]))
                disagree = disagree "\n" f ": dhat counted " blocks["dhat", f] " blocks, " bytes["dhat", f] " bytes"
            if (("stats_alloc", f) in blocks && blocks["stats_alloc", f] != blocks["heapwatch", f])
                disagree = disagree "\n" f ": stats_alloc counted " blocks["stats_alloc", f] " blocks"
        }
        print ""
        print "ns of thread CPU time per iteration (median of 11 rounds, lowest of " repeats " processes);"
        print "in parentheses the same call bare under the same allocator (dhat: with its profiler"
        print "running). bare ns: plain System, no counter. blocks counts a realloc as a block"
        print "(stats_alloc: allocations + reallocations); bytes as requested."
        printf "Widest spread of one cell over the %d repetitions: %.2fx (%s).\n", repeats, widest, widest_cell
        if (disagree != "") { print "\nCOUNTS DISAGREE between the processes:" disagree; exit 1 }
    }' "$out/rows"
