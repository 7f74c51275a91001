//! Prints the benchmark table from criterion's results: per workload, the median time of each
//! allocator configuration (median over the rounds `scripts/bench.sh` ran), heapwatch's ratio to
//! the bare allocator underneath it, and for alloc/free pairs the added nanoseconds.
//!
//! ```text
//! cargo run --release --example bench_table -- target/bench-rounds
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CONFIGS: [&str; 6] = [
    "system",
    "heapwatch_system_off",
    "heapwatch_system_512k",
    "jemalloc",
    "heapwatch_jemalloc_off",
    "heapwatch_jemalloc_512k",
];

/// Median of criterion's per-iteration median estimate, in nanoseconds, over every round.
fn medians(rounds_dir: &Path) -> BTreeMap<(String, String), f64> {
    let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let rounds: Vec<PathBuf> = std::fs::read_dir(rounds_dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e} (run scripts/bench.sh first)",
                rounds_dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for round in rounds {
        let Ok(groups) = std::fs::read_dir(&round) else {
            continue;
        };
        for group in groups.flatten() {
            for config in CONFIGS {
                let file = group.path().join(config).join("new").join("estimates.json");
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let json: serde_json::Value =
                    serde_json::from_str(&text).expect("criterion estimates");
                if let Some(median) = json["median"]["point_estimate"].as_f64() {
                    samples
                        .entry((
                            group.file_name().to_string_lossy().into_owned(),
                            config.to_owned(),
                        ))
                        .or_default()
                        .push(median);
                }
            }
        }
    }
    samples
        .into_iter()
        .map(|(key, mut values)| {
            values.sort_by(f64::total_cmp);
            (key, values[values.len() / 2])
        })
        .collect()
}

fn format_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

fn main() {
    let rounds_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench-rounds".to_owned());
    let medians = medians(Path::new(&rounds_dir));
    let mut workloads: Vec<String> = medians.keys().map(|(w, _)| w.clone()).collect();
    workloads.dedup();
    workloads.sort_by_key(|w| {
        (
            !w.starts_with("pair"),
            w.ends_with("2t"),
            w.split('_')
                .nth(1)
                .and_then(|s| s.trim_end_matches('B').parse::<u32>().ok()),
            w.clone(),
        )
    });

    println!("| workload | System | hw off | hw 512k | ratio 512k/System | jemalloc | hw off | hw 512k | ratio 512k/jemalloc | added per pair (jemalloc, 512k) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for workload in workloads {
        let get = |config: &str| medians.get(&(workload.clone(), config.to_owned())).copied();
        let cell = |config: &str| get(config).map_or("–".to_owned(), format_time);
        let ratio = |a: &str, b: &str| match (get(a), get(b)) {
            (Some(x), Some(y)) => format!("{:.3}×", x / y),
            _ => "–".to_owned(),
        };
        let added = match (get("heapwatch_jemalloc_512k"), get("jemalloc")) {
            (Some(x), Some(y)) if workload.starts_with("pair") => format!("{:+.2} ns", x - y),
            _ => "–".to_owned(),
        };
        println!(
            "| {workload} | {} | {} | {} | {} | {} | {} | {} | {} | {added} |",
            cell("system"),
            cell("heapwatch_system_off"),
            cell("heapwatch_system_512k"),
            ratio("heapwatch_system_512k", "system"),
            cell("jemalloc"),
            cell("heapwatch_jemalloc_off"),
            cell("heapwatch_jemalloc_512k"),
            ratio("heapwatch_jemalloc_512k", "jemalloc"),
        );
    }
}
