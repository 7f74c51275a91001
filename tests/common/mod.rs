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
    // Exactly the features this test was built with (all of them), so cargo reuses the library and
    // the examples `cargo test` already built instead of rebuilding them for a different set.
    let features: Vec<&str> = [
        ("jemalloc", cfg!(feature = "jemalloc")),
        ("flamegraph", cfg!(feature = "flamegraph")),
        ("dwarf", cfg!(feature = "dwarf")),
        ("http", cfg!(feature = "http")),
        ("axum", cfg!(feature = "axum")),
        ("cli", cfg!(feature = "cli")),
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

/// The pixels of a headless-Chromium screenshot, as RGB triples.
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<[u8; 3]>,
}

/// Renders `url` in headless Chromium at `window` (`"W,H"`) into `dir/name`, decodes it and, when
/// `HEAPWATCH_SCREENSHOT_DIR` is set, copies it there (that is how the README's pictures are made).
/// Panics, saying what to install, when Chromium is missing.
pub fn chromium_screenshot(url: &str, window: &str, dir: &Path, name: &str) -> Screenshot {
    let shot = dir.join(name);
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--window-size={window}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("chromium could not be run ({e}): install Debian package chromium; this test does not pass without it")
        });
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = std::fs::File::open(&shot).expect("open the screenshot");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut pixels).expect("a PNG frame");
    let channels = info.color_type.samples();
    let rgb = pixels[..info.buffer_size()]
        .chunks(channels)
        .map(|px| [px[0], px[1], px[2]])
        .collect();
    if let Ok(dest) = std::env::var("HEAPWATCH_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&dest).join(name)).expect("copy the screenshot");
    }
    Screenshot {
        width: info.width,
        height: info.height,
        rgb,
    }
}
