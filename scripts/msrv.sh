#!/usr/bin/env bash
# Checks that the library, with every feature, builds with the oldest Rust that Cargo.toml's
# `rust-version` promises (1.89 and older reject a `const` thread-local that points at a static
# counter block). Needs rustup; installs the toolchain if it is missing. Not part of .ci/run: it
# downloads a toolchain and compiles the dependency tree once more.
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain list | grep -q "^$msrv" || rustup toolchain install "$msrv" --profile minimal
cargo "+$msrv" check --all-features --lib --target-dir "${CARGO_TARGET_DIR:-target}/msrv"
echo "builds with Rust $msrv"
