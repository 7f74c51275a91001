#!/usr/bin/env bash
# The test suite: release mode (the accuracy and stress tests allocate gigabytes and millions of
# blocks): all features as built by default (stacks from the unwinder), then the stack-dependent
# tests again with frame pointers (heapwatch's Auto capture switches to the frame-pointer walk);
# lints first, docs last.
#
# Needs Go for the real-client tests (`go tool pprof`); `.ci/run` installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The real clients the tests run; `.ci/run` installs them.
for tool in go:golang-go promtool:prometheus prometheus:prometheus chromium:chromium objcopy:binutils; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        echo "error: '${tool%%:*}' is not installed; the real-client tests need it (Debian package ${tool#*:}; bash .ci/run installs it)" >&2
        exit 1
    fi
done

echo "== lints"
cargo fmt --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo build --no-default-features --quiet

echo "== tests, default build (stack capture: unwinder)"
HEAPWATCH_EXPECT_FRAME_POINTERS=0 cargo test --release --all-features

# Again with frame pointers, for the tests whose result depends on how stacks are captured
# (the profile's figures and names, thread exit, the real kill). The HTTP, CLI and detector
# tests read the same profiles through the same code whichever walk captured them, so they, and
# the features only they need (axum, cli), are left out: that saves a third of this build.
echo "== tests, built with frame pointers (stack capture: frame-pointer walk)"
HEAPWATCH_EXPECT_FRAME_POINTERS=1 RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes" \
    cargo test --release --features dwarf --target-dir target/frame-pointers --lib \
    --test accuracy --test unbiased --test stack_capture --test source_lines --test demo_outputs \
    --test stress_threads --test early_wake --test oom_kill --test mixed_service --test leak_check --test leak_check_joined \
    --test hostile_stack --test hostile_fork

echo "== docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
