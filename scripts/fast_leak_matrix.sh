#!/usr/bin/env bash
# The fast-leak matrix (tests/fast_leak.rs) at full size: the release orders_service leaking
# 256 MiB/s and 1 GiB/s into real memory cgroups of 96 MiB and 160 MiB, RUNS runs per cell
# (default 20, so 80 runs), counting the runs that left a dump set before the kernel's OOM kill
# and the runs whose newest set names the leak once the next instance has started. CI runs the
# same test with 2 runs per cell.
#
# Needs root, a memory cgroup controller (v1 or v2) and Go (golang-go). A run takes about
# 4.5 s (the service's start, under a second of leak, the 4 s restart, go tool pprof), so the
# 80 runs of 20 per cell take about 6 minutes after the release build (2 runs per cell, as CI
# runs them: about 35 s). The scratch directories are removed; HEAPWATCH_FAST_LEAK_KEEP=1 keeps
# them (dumps, each instance's standard error).
#
# Usage: scripts/fast_leak_matrix.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
HEAPWATCH_FAST_LEAK_RUNS=${1:-20} exec cargo test --release --all-features --test fast_leak
