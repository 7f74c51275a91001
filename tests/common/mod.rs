//! Helpers shared by the integration tests: the crate's example binaries and `go tool pprof`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of example `name`, built now (cargo does nothing if it is up to date) in the same
/// profile and target directory as the running test, so a test never runs a stale example.
pub fn example_binary(name: &str) -> PathBuf {
    let profile_dir = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target directory");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name, "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    // The same features as this test was built with, so the library is not rebuilt.
    let features: Vec<&str> = [
        ("jemalloc", cfg!(feature = "jemalloc")),
        ("flamegraph", cfg!(feature = "flamegraph")),
        ("dwarf", cfg!(feature = "dwarf")),
        ("http", cfg!(feature = "http")),
        ("axum", cfg!(feature = "axum")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    build
        .arg("--no-default-features")
        .arg("--features")
        .arg(features.join(","));
    let status = build.status().expect("run cargo to build an example");
    assert!(status.success(), "building example {name} failed");
    profile_dir.join("examples").join(name)
}

/// `go tool pprof -top` as (function, flat) rows, in its order. Panics, saying what to
/// install, when Go is missing: these tests never pass without the real client.
pub fn pprof_top(profile: &Path, sample_index: &str) -> Vec<(String, i64)> {
    let mut command = Command::new("go");
    command.args([
        "tool",
        "pprof",
        "-top",
        "-nodefraction=0",
        "-nodecount=1000",
    ]);
    command.arg(format!("-sample_index={sample_index}"));
    if sample_index.ends_with("space") {
        command.arg("-unit=B");
    }
    command.arg(profile);
    let output = command.output().unwrap_or_else(|e| {
        panic!("`go tool pprof` could not be run ({e}): install Go (Debian package golang-go); this test does not pass without it")
    });
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flat = fields.first()?.trim_end_matches('B').parse().ok()?;
            Some((fields[5..].join(" "), flat))
        })
        .collect()
}
