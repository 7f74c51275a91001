//! Prints the overhead tables from the results `scripts/bench.sh` collected: criterion's median
//! time per workload and configuration (the median over the rounds), each configuration's ratio
//! to bare jemalloc, the nanoseconds heapwatch adds per alloc/free pair over its own inner
//! allocator, and the peak RSS of the realistic workloads.
//!
//! ```text
//! cargo run --release --example bench_table -- target/bench-rounds
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Configurations in table order: floors, heapwatch, then the peers.
const CONFIGS: [&str; 12] = [
    "jemalloc",
    "system",
    "heapwatch_jemalloc_off",
    "heapwatch_jemalloc_512k",
    "heapwatch_jemalloc_64k",
    "heapwatch_system_off",
    "heapwatch_system_512k",
    "heapwatch_system_64k",
    "cap",
    "jemalloc_prof",
    "re_memory",
    "dhat",
];

/// Workloads in column order.
const WORKLOADS: [&str; 12] = [
    "pair_16B_1t",
    "pair_256B_1t",
    "pair_4KiB_1t",
    "pair_1MiB_1t",
    "pair_16B_2t",
    "pair_256B_2t",
    "pair_4KiB_2t",
    "pair_1MiB_2t",
    "producer_consumer_64B",
    "json_parse_drop",
    "btreemap_build_sort_drop",
    "request_tokenise_sort_format",
];

type Medians = BTreeMap<(String, String), f64>;

/// Median over the rounds of criterion's per-iteration median estimate, in nanoseconds.
fn medians(rounds_dir: &Path) -> Medians {
    let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let rounds: Vec<PathBuf> = std::fs::read_dir(rounds_dir)
        .unwrap_or_else(|e| {
            eprintln!(
                "cannot read {}: {e} (run scripts/bench.sh first)",
                rounds_dir.display()
            );
            std::process::exit(1)
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    for round in rounds {
        for workload in WORKLOADS {
            for config in CONFIGS.iter() {
                let file = round.join(workload).join(config).join("new/estimates.json");
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let json: serde_json::Value =
                    serde_json::from_str(&text).expect("criterion estimates are JSON");
                if let Some(median) = json["median"]["point_estimate"].as_f64() {
                    samples
                        .entry((workload.to_owned(), (*config).to_owned()))
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

fn header(first: &str) {
    println!("| {first} | {} |", WORKLOADS.join(" | "));
    println!("|---|{}", "---:|".repeat(WORKLOADS.len()));
}

fn configs_present(medians: &Medians) -> Vec<&'static str> {
    CONFIGS
        .into_iter()
        .filter(|c| medians.keys().any(|(_, config)| config == c))
        .collect()
}

fn print_table(medians: &Medians, cell: impl Fn(&str, &str) -> Option<String>) {
    header("configuration");
    for config in configs_present(medians) {
        let cells: Vec<String> = WORKLOADS
            .iter()
            .map(|w| cell(config, w).unwrap_or_else(|| "–".to_owned()))
            .collect();
        println!("| {config} | {} |", cells.join(" | "));
    }
    println!();
}

/// Peak RSS lines written by `scripts/bench.sh`: `configuration workload kib`.
fn print_peak_rss(rounds_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(rounds_dir.join("peak_rss.txt")) else {
        return;
    };
    let mut rows: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(config), Some(workload), Some(kib)) =
            (fields.next(), fields.next(), fields.next())
        {
            if let Ok(kib) = kib.parse() {
                rows.entry(config.to_owned())
                    .or_default()
                    .insert(workload.to_owned(), kib);
            }
        }
    }
    println!("Peak RSS (MiB) over 30 runs of each realistic workload, one process per cell:\n");
    println!(
        "| configuration | json_parse_drop | btreemap_build_sort_drop | request_tokenise_sort_format |"
    );
    println!("|---|---:|---:|---:|");
    for config in CONFIGS.iter().filter(|c| rows.contains_key(**c)) {
        let row = &rows[*config];
        let cell = |w: &str| {
            row.get(w)
                .map_or("–".to_owned(), |k| format!("{:.1}", *k as f64 / 1024.0))
        };
        println!(
            "| {config} | {} | {} | {} |",
            cell("json_parse_drop"),
            cell("btreemap_build_sort_drop"),
            cell("request_tokenise_sort_format")
        );
    }
    println!();
}

fn main() {
    let rounds_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/bench-rounds".to_owned()),
    );
    let medians = medians(&rounds_dir);
    let get = |config: &str, workload: &str| {
        medians
            .get(&(workload.to_owned(), config.to_owned()))
            .copied()
    };

    println!("Ratio to bare jemalloc (median time / jemalloc's median time in the same run):\n");
    print_table(&medians, |config, workload| {
        Some(format!(
            "{:.3}×",
            get(config, workload)? / get("jemalloc", workload)?
        ))
    });

    println!("Median time per operation (a pair, a handed-off block, or one workload run):\n");
    print_table(&medians, |config, workload| {
        get(config, workload).map(format_time)
    });

    println!("Added per operation over the configuration's own inner allocator:\n");
    print_table(&medians, |config, workload| {
        let floor = if config.contains("system") || config == "dhat" {
            "system"
        } else {
            "jemalloc"
        };
        if config == floor {
            return None;
        }
        let added = get(config, workload)? - get(floor, workload)?;
        Some(
            if workload.starts_with("pair") || workload.starts_with("producer") {
                format!("{added:+.2} ns")
            } else {
                format!("{:+.1} %", 100.0 * added / get(floor, workload)?)
            },
        )
    });

    print_peak_rss(&rounds_dir);
}
