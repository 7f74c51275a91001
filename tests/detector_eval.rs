//! The detector against its quality bars, on synthetic series (a smaller run of
//! `tools/detector_eval.rs`, whose full table is in the guide): recall ≥ 99 % for leaks of
//! at least 0.5 % of the limit per minute within 10 simulated minutes (≥ 97 % with spikes or
//! sawtooth caches on top); at most 1 % `leak` verdicts over 24 simulated hours of spike-only
//! and sawtooth-only series; `limit_too_low` and `spike` told apart on their own series.
//!
//! Frame-pointer pass: not needed — synthetic series; no stack is captured.

#[path = "../tools/detector_eval.rs"]
mod eval;

use eval::{false_rate, recall, Shape};
use heapwatch::detect::{DetectorConfig, VerdictKind};

fn main() {
    let config = DetectorConfig::default();
    let mut failures = Vec::new();
    for rate in [0.005, 0.01, 0.05] {
        for noisy in [false, true] {
            let row = recall(rate, noisy, 100, 600, &config);
            println!("{}: {} {:.1} %", row.label, row.figure, 100.0 * row.value);
            // Leaks with noise: ≥ 99 %. With spikes or sawtooth caches on top the detector is
            // held to 97 %: it measures 98.5 % on 200 series (docs/verdicts.md), the price of keeping
            // false leak verdicts on spike and sawtooth series well under 1 %.
            let target = if noisy { 0.97 } else { 0.99 };
            if row.value < target {
                failures.push(format!("{}: recall {:.1} %", row.label, 100.0 * row.value));
            }
        }
    }
    let day = [
        (
            "spikes only",
            Shape {
                base: 0.35,
                spikes: true,
                ..Shape::default()
            },
        ),
        (
            "sawtooth only",
            Shape {
                base: 0.35,
                sawtooth: true,
                ..Shape::default()
            },
        ),
    ];
    for (label, shape) in day {
        let (row, _) = false_rate(label, shape, 6, 24, VerdictKind::Leak, &config);
        println!("{label}: {} {:.3} %", row.figure, 100.0 * row.value);
        if row.value > 0.01 {
            failures.push(format!("{label}: {:.3} % leak verdicts", 100.0 * row.value));
        }
    }
    // Each kind on its own series: mostly its own verdict, never the other one.
    let (too_low, _) = false_rate(
        "flat at 90 %",
        Shape {
            base: 0.9,
            ..Shape::default()
        },
        2,
        6,
        VerdictKind::Spike,
        &config,
    );
    let (spikes, _) = false_rate(
        "spikes at 30 %",
        Shape {
            base: 0.3,
            spikes: true,
            ..Shape::default()
        },
        2,
        6,
        VerdictKind::LimitTooLow,
        &config,
    );
    let share = |row: &eval::Row, kind| {
        row.verdicts.get(&kind).copied().unwrap_or(0) as f64
            / row.verdicts.values().sum::<usize>().max(1) as f64
    };
    println!(
        "flat at 90 %: limit_too_low {:.1} %, spike {:.1} %; spikes at 30 %: spike {:.1} %, limit_too_low {:.1} %",
        100.0 * share(&too_low, VerdictKind::LimitTooLow),
        100.0 * too_low.value,
        100.0 * share(&spikes, VerdictKind::Spike),
        100.0 * spikes.value
    );
    if share(&too_low, VerdictKind::LimitTooLow) < 0.95 || too_low.value > 0.0 {
        failures.push("limit_too_low series not told apart".to_owned());
    }
    if share(&spikes, VerdictKind::Spike) < 0.95 || spikes.value > 0.0 {
        failures.push("spike series not told apart".to_owned());
    }
    assert!(
        failures.is_empty(),
        "detector misses its targets: {failures:#?}"
    );
    println!("detector_eval: passed");
}
