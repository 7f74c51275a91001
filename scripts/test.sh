#!/usr/bin/env bash
# The test suite: release mode (the accuracy and stress tests allocate gigabytes and millions of
# blocks): all features as built by default (stacks from the unwinder), then the stack-dependent
# tests again with frame pointers (heapwatch's Auto capture switches to the frame-pointer walk);
# lints and the module graph first, docs last.
#
# The real-client tests need Go, Prometheus (promtool and the server), Chromium and binutils;
# `.ci/run` installs them. Each stage checks for the tools its tests run, and only those.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}

# require TOOL:DEBIAN-PACKAGE...: fail the stage up front, naming what to install.
require() {
    local tool missing=()
    for tool in "$@"; do
        command -v "${tool%%:*}" >/dev/null || missing+=("'${tool%%:*}' (Debian package ${tool#*:})")
    done
    if (( ${#missing[@]} > 0 )); then
        echo "error: this stage's tests run ${missing[*]}, not installed; bash .ci/run installs them" >&2
        exit 1
    fi
}

echo "== module graph (no import cycle between the files of src/)"
mkdir -p "$target_dir"
rustc --edition 2021 --test -O scripts/import_cycles.rs -o "$target_dir/import_cycles_test"
"$target_dir/import_cycles_test" --quiet
rustc --edition 2021 -O scripts/import_cycles.rs -o "$target_dir/import_cycles"
"$target_dir/import_cycles" src

echo "== lints"
cargo fmt --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo build --no-default-features --quiet

echo "== tests, default build (stack capture: unwinder)"
require go:golang-go promtool:prometheus prometheus:prometheus chromium:chromium objcopy:binutils
HEAPWATCH_EXPECT_FRAME_POINTERS=0 cargo test --release --all-features

# Again with frame pointers, for every test whose result can depend on how stacks are captured.
# A test file opts out with a line `//! Frame-pointer pass: not needed — <why>` (the HTTP, CLI
# and detector tests read the same profiles through the same code whichever walk captured
# them); every other file runs here, so a new stack-dependent test cannot be forgotten. The
# features only opted-out tests need (axum, cli) are left out: that saves a third of the build.
fp_tests=(--lib)
for file in tests/*.rs; do
    grep -q '^//! Frame-pointer pass: not needed' "$file" || fp_tests+=(--test "$(basename "$file" .rs)")
done
echo "== tests, built with frame pointers (stack capture: frame-pointer walk): ${fp_tests[*]}"
require go:golang-go
HEAPWATCH_EXPECT_FRAME_POINTERS=1 RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes" \
    cargo test --release --features dwarf --target-dir "$target_dir/frame-pointers" "${fp_tests[@]}"

echo "== docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
