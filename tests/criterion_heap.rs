//! Frame-pointer pass: not needed (criterion's figures are exact counts; the profile's naming
//! is checked in the default build, which unwinds as services do).
//!
//! heapwatch inside criterion, as a benchmark uses it (feature `criterion`): the bytes and
//! blocks per iteration criterion reports with `BytesAllocated` and `BlocksAllocated` are the
//! exact figures `heapwatch::measure` gives for one call; and under `--profile-time`,
//! `HeapProfiler` leaves a `heap.pb.gz` that `go tool pprof -top -sample_index=alloc_space`
//! reads with the benchmarked function first, and a `heap.svg` beside it.
#![cfg(feature = "criterion")]

mod common;
#[path = "common/five_workloads.rs"]
mod five;

use criterion::Criterion;
use heapwatch::bench::{BlocksAllocated, BytesAllocated, HeapProfiler};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// criterion's estimate of the mean per iteration for benchmark `id` under `dir`.
fn mean_estimate(dir: &Path, id: &str) -> f64 {
    let path = dir.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("criterion wrote no {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("criterion's JSON");
    json["mean"]["point_estimate"]
        .as_f64()
        .unwrap_or_else(|| panic!("no mean in {text}"))
}

/// A quick criterion: its statistics, a fraction of its default time.
fn quick<M: criterion::measurement::Measurement>(c: Criterion<M>, dir: &Path) -> Criterion<M> {
    c.output_directory(dir)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(50))
        .measurement_time(Duration::from_millis(200))
        .without_plots()
}

/// The cumulative `alloc_space` bytes `go tool pprof -top -cum` gives the function whose name
/// ends with `::name`.
fn cumulative(profile: &Path, name: &str) -> i64 {
    let text = common::go_pprof(
        &[
            "-top",
            "-cum",
            "-nodecount=1000",
            "-sample_index=alloc_space",
            "-unit=B",
        ],
        profile.to_str().expect("UTF-8"),
        profile.parent().expect("a directory"),
    );
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let function = fields.get(5)?;
            (function.ends_with(&format!("::{name}")))
                .then(|| fields[3].trim_end_matches('B').parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or_else(|| panic!("{name} is not in\n{text}"))
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapwatch-criterion-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

#[test]
fn criterion_measures_allocations_per_iteration_and_profiles_each_benchmark() {
    let dir = scratch();
    let exact: Vec<heapwatch::Allocations> = five::WORKLOADS
        .iter()
        .map(|w| {
            let (_, first) = heapwatch::measure(|| drop((w.run)()));
            let (_, again) = heapwatch::measure(|| drop((w.run)()));
            assert_eq!(first.bytes, again.bytes, "{}: not deterministic", w.name);
            first
        })
        .collect();

    let mut bytes = quick(
        Criterion::default().with_measurement(BytesAllocated),
        &dir.join("bytes"),
    );
    let mut blocks = quick(
        Criterion::default().with_measurement(BlocksAllocated),
        &dir.join("blocks"),
    );
    for w in &five::WORKLOADS {
        bytes.bench_function(w.name, |b| b.iter(w.run));
        blocks.bench_function(w.name, |b| b.iter(w.run));
    }
    for (w, exact) in five::WORKLOADS.iter().zip(&exact) {
        let per_iteration = mean_estimate(&dir.join("bytes"), w.name);
        println!(
            "{:16} criterion {per_iteration:10.1} B/iter, measure {:8} B",
            w.name, exact.bytes
        );
        assert!(
            (per_iteration - exact.bytes as f64).abs() < 0.5,
            "{}: criterion says {per_iteration} bytes per iteration, measure {}",
            w.name,
            exact.bytes
        );
        let per_iteration = mean_estimate(&dir.join("blocks"), w.name);
        assert!(
            (per_iteration - exact.blocks as f64).abs() < 0.5,
            "{}: criterion says {per_iteration} blocks per iteration, measure {}",
            w.name,
            exact.blocks
        );
    }

    // Profiles. A symlink planted where the profile goes is replaced, its target untouched.
    let profiles = dir.join("profiles");
    let bait = dir.join("bait");
    std::fs::write(&bait, b"not yours").unwrap();
    let planted = profiles.join("vec_push").join("profile");
    std::fs::create_dir_all(&planted).unwrap();
    std::os::unix::fs::symlink(&bait, planted.join("heap.pb.gz")).unwrap();
    let mut profiled = Criterion::default()
        .output_directory(&profiles)
        .with_profiler(HeapProfiler::default())
        .profile_time(Some(Duration::from_millis(500)));
    let before = heapwatch::sample_rate();
    for w in &five::WORKLOADS {
        profiled.bench_function(w.name, |b| b.iter(w.run));
    }
    assert_eq!(
        heapwatch::sample_rate(),
        before,
        "the rate in force before is restored"
    );
    assert_eq!(std::fs::read(&bait).unwrap(), b"not yours");
    for w in &five::WORKLOADS {
        let (pprof, svg) = HeapProfiler::files(&profiles.join(w.name).join("profile"));
        assert!(std::fs::symlink_metadata(&pprof).unwrap().is_file());
        let svg_text = std::fs::read_to_string(&svg).expect("the flamegraph");
        assert!(
            svg_text.contains("<svg") && svg_text.contains(w.name),
            "{}",
            w.name
        );
        let top = common::pprof_top(&pprof, "alloc_space");
        println!(
            "{:16} go tool pprof -top: {:?}",
            w.name,
            &top[..top.len().min(3)]
        );
        let (first, _) = top.first().expect("a row");
        // `-top` puts first the function whose code allocated: the benchmarked one, with
        // std's containers and formatting cut as machinery — except where a library does
        // the allocating (serde_json building its values), which is then first.
        let allocator = if w.name == "json_parse" {
            "serde_json::"
        } else {
            w.name
        };
        assert!(
            first.contains(allocator),
            "{}: go tool pprof -top puts {first:?} first: {top:?}",
            w.name
        );
        // And everything the profile holds was allocated under the benchmarked function.
        let total: i64 = top.iter().map(|(_, flat)| flat).sum();
        let cum = cumulative(&pprof, w.name);
        assert!(
            cum * 100 >= total * 99,
            "{}: {cum} of {total} bytes under it",
            w.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
