//! Evaluates the leak detector on synthetic series and prints the tables of the guide's page
//! on verdicts (docs/verdicts.md).
//!
//! Each series is one reading per simulated second under a 1 GiB limit: a base level, noise
//! (AR(1), σ = 0.5 % of the limit), and one or more of: a leak of a given rate, traffic spikes
//! (Poisson, one a minute on average, 5–30 % of the limit for 5–60 s), a sawtooth cache (grows
//! 5–20 % of the limit over 1–2.8 minutes, then empties), a single step up (5–15 %). The
//! detector (default settings) is asked for a verdict every 10 simulated seconds. A second
//! table follows the first window (10 minutes) of each kind of series second by second, as the
//! watch asks at its default 1 s tick: how long until the first verdict, and how many series
//! see a `leak` verdict in it.
//!
//! ```text
//! cargo run --release --example detector_eval            # full evaluation (~1 minute)
//! cargo run --release --example detector_eval -- quick   # fewer series
//! ```

use heapwatch::detect::{Detector, DetectorConfig, Point, VerdictKind};
use std::collections::HashMap;

/// The simulated limit.
pub const LIMIT: f64 = (1u64 << 30) as f64;
const EVALUATE_EVERY_S: u64 = 10;

/// What a synthetic series contains.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Base level, fraction of the limit.
    pub base: f64,
    /// Leak rate, fraction of the limit per minute.
    pub leak_per_minute: f64,
    /// Traffic spikes.
    pub spikes: bool,
    /// A sawtooth cache.
    pub sawtooth: bool,
    /// A single step up at a random time in the first half.
    pub step: bool,
}

/// xorshift64* with Box–Muller: deterministic per seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.next_f64().ln()).sqrt() * (std::f64::consts::TAU * self.next_f64()).cos()
    }
}

/// Generates `seconds` readings of `shape` (heap bytes, one per second).
pub fn generate(shape: Shape, seconds: u64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let noise_sigma = 0.005;
    let phi: f64 = 0.9;
    let innovation = noise_sigma * (1.0 - phi * phi).sqrt();
    let mut noise = 0.0;
    let mut spike_left = 0u64;
    let mut spike_height = 0.0;
    let saw_period = rng.uniform(60.0, 170.0);
    let saw_height = rng.uniform(0.05, 0.20);
    let saw_phase = rng.uniform(0.0, saw_period);
    let step_at = rng.uniform(0.0, seconds as f64 / 2.0);
    let step_height = rng.uniform(0.05, 0.15);
    (0..seconds)
        .map(|t| {
            let tf = t as f64;
            noise = phi * noise + innovation * rng.normal();
            let mut level = shape.base + noise + shape.leak_per_minute * tf / 60.0;
            if shape.spikes {
                if spike_left == 0 && rng.next_f64() < 1.0 / 60.0 {
                    spike_left = rng.uniform(5.0, 60.0) as u64;
                    spike_height = rng.uniform(0.05, 0.30);
                }
                if spike_left > 0 {
                    level += spike_height;
                    spike_left -= 1;
                }
            }
            if shape.sawtooth {
                level += saw_height * ((tf + saw_phase) % saw_period) / saw_period;
            }
            if shape.step && tf >= step_at {
                level += step_height;
            }
            level.max(0.001) * LIMIT
        })
        .collect()
}

/// Runs the detector over a series; returns the verdict at each evaluation (time, verdict).
pub fn verdicts(series: &[f64], config: &DetectorConfig) -> Vec<(u64, VerdictKind)> {
    let mut detector = Detector::new(config.clone());
    let mut out = Vec::new();
    for (t, &heap) in series.iter().enumerate() {
        let t = t as u64;
        detector.push(Point::reading(
            t * 1000,
            heap as u64,
            Some(heap as u64),
            None,
        ));
        if t % EVALUATE_EVERY_S == EVALUATE_EVERY_S - 1 {
            out.push((t + 1, detector.evaluate(Some(LIMIT as u64)).kind));
        }
    }
    out
}

/// One row of the results.
pub struct Row {
    pub label: String,
    pub series: usize,
    pub figure: String,
    pub value: f64,
    pub verdicts: HashMap<VerdictKind, usize>,
}

/// Share of leak series detected as `leak` within `by_s` seconds.
pub fn recall(rate: f64, noisy: bool, series: usize, by_s: u64, config: &DetectorConfig) -> Row {
    let mut detected = 0;
    let mut verdicts_seen = HashMap::new();
    for seed in 0..series as u64 {
        let mut rng = Rng::new(seed ^ 0xabc);
        let shape = Shape {
            base: rng.uniform(0.2, (0.9 - rate * by_s as f64 / 60.0).clamp(0.2, 0.5)),
            leak_per_minute: rate,
            spikes: noisy && seed % 2 == 0,
            sawtooth: noisy && seed % 2 == 1,
            step: false,
        };
        let data = generate(shape, by_s, seed);
        let verdicts = verdicts(&data, config);
        if verdicts.iter().any(|&(_, v)| v == VerdictKind::Leak) {
            detected += 1;
        }
        if let Some(&(_, last)) = verdicts.last() {
            *verdicts_seen.entry(last).or_insert(0) += 1;
        }
    }
    Row {
        label: format!(
            "leak {:.2} %/min{}",
            rate * 100.0,
            if noisy { " + spikes or sawtooth" } else { "" }
        ),
        series,
        figure: format!("recall within {} min", by_s / 60),
        value: detected as f64 / series as f64,
        verdicts: verdicts_seen,
    }
}

/// Share of evaluations (after the first window) that say `wrong`, over `hours`.
pub fn false_rate(
    label: &str,
    shape: Shape,
    series: usize,
    hours: u64,
    wrong: VerdictKind,
    config: &DetectorConfig,
) -> (Row, f64) {
    let mut evaluations = 0;
    let mut wrong_count = 0;
    let mut series_with_wrong = 0;
    let mut verdicts_seen = HashMap::new();
    for seed in 0..series as u64 {
        let data = generate(shape, hours * 3600, seed + 1000);
        let mut any = false;
        for (t, v) in verdicts(&data, config) {
            if t < config.window.as_secs() {
                continue;
            }
            evaluations += 1;
            *verdicts_seen.entry(v).or_insert(0) += 1;
            if v == wrong {
                wrong_count += 1;
                any = true;
            }
        }
        series_with_wrong += any as usize;
    }
    (
        Row {
            label: label.to_owned(),
            series,
            figure: format!("`{}` verdicts over {hours} h", wrong.name()),
            value: wrong_count as f64 / evaluations.max(1) as f64,
            verdicts: verdicts_seen,
        },
        series_with_wrong as f64 / series as f64,
    )
}

/// The first window of one series, with the detector asked at every reading as the watch asks
/// at every tick: seconds to the first verdict other than `unknown` and to the first `leak`
/// (`None`: not within the series), and the seconds with a `leak` verdict.
pub fn first_verdicts(series: &[f64], config: &DetectorConfig) -> (Option<u64>, Option<u64>, u64) {
    let mut detector = Detector::new(config.clone());
    let (mut first, mut first_leak, mut leak_seconds) = (None, None, 0);
    for (t, &heap) in series.iter().enumerate() {
        let t = t as u64;
        detector.push(Point::reading(
            t * 1000,
            heap as u64,
            Some(heap as u64),
            None,
        ));
        let kind = detector.evaluate(Some(LIMIT as u64)).kind;
        if kind != VerdictKind::Unknown && first.is_none() {
            first = Some(t);
        }
        if kind == VerdictKind::Leak {
            first_leak = first_leak.or(Some(t));
            leak_seconds += 1;
        }
    }
    (first, first_leak, leak_seconds)
}

/// The first window of `series` series of `shape` (seeds as [`recall`]'s for a leak, as
/// [`false_rate`]'s otherwise), asked at every simulated second.
pub struct FirstWindow {
    /// Median seconds to the first verdict other than `unknown`.
    pub median_first_s: u64,
    /// Longest seconds to it (the window's length if some series had none).
    pub max_first_s: u64,
    /// Share of series with a `leak` verdict within the window.
    pub leak_share: f64,
    /// Median seconds to that `leak` verdict, among the series with one.
    pub median_leak_s: Option<u64>,
    /// Share of all the seconds of the windows with a `leak` verdict.
    pub leak_seconds_share: f64,
}

/// Time to the first verdict, and to the first `leak`, within the first window.
pub fn first_window(shape: Shape, series: usize, config: &DetectorConfig) -> FirstWindow {
    let window_s = config.window.as_secs();
    let mut firsts = Vec::new();
    let mut leaks = Vec::new();
    let mut leak_seconds = 0;
    for seed in 0..series as u64 {
        let shape = if shape.leak_per_minute > 0.0 {
            let mut rng = Rng::new(seed ^ 0xabc);
            let top = (0.9 - shape.leak_per_minute * window_s as f64 / 60.0).clamp(0.2, 0.5);
            Shape {
                base: rng.uniform(0.2, top),
                ..shape
            }
        } else {
            shape
        };
        let seed = if shape.leak_per_minute > 0.0 {
            seed
        } else {
            seed + 1000
        };
        let data = generate(shape, window_s, seed);
        let (first, leak, seconds) = first_verdicts(&data, config);
        firsts.push(first.unwrap_or(window_s));
        leaks.extend(leak);
        leak_seconds += seconds;
    }
    firsts.sort_unstable();
    leaks.sort_unstable();
    FirstWindow {
        median_first_s: firsts[firsts.len() / 2],
        max_first_s: firsts.last().copied().unwrap_or(0),
        leak_share: leaks.len() as f64 / series.max(1) as f64,
        median_leak_s: leaks.get(leaks.len() / 2).copied(),
        leak_seconds_share: leak_seconds as f64 / (series.max(1) as u64 * window_s) as f64,
    }
}

/// The verdicts seen, as "leak 3 %, spike 97 %".
pub fn mix(verdicts: &HashMap<VerdictKind, usize>) -> String {
    let total: usize = verdicts.values().sum();
    let mut entries: Vec<(&VerdictKind, &usize)> = verdicts.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1));
    entries
        .iter()
        .map(|(k, n)| {
            format!(
                "{} {:.1} %",
                k.name(),
                100.0 * **n as f64 / total.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(dead_code)]
fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (leak_series, day_series) = if quick { (50, 2) } else { (200, 10) };
    let mut config = DetectorConfig::default();
    // Overrides for exploring the settings (the guide's table uses the defaults).
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(s) = env("EVAL_FLOOR_S") {
        config.floor_window = std::time::Duration::from_secs_f64(s);
    }
    if let Some(p) = env("EVAL_SIGNIFICANCE") {
        config.significance = p;
    }
    if let Some(n) = env("EVAL_SEGMENTS") {
        config.segments = n as usize;
    }
    if let Some(s) = env("EVAL_CONFIRM_S") {
        config.confirm = std::time::Duration::from_secs_f64(s);
    }
    println!("| series | n | figure | result | verdicts seen (last, or all evaluations) |");
    println!("|---|---:|---|---:|---|");
    for rate in [0.0025, 0.005, 0.01, 0.02, 0.05] {
        for noisy in [false, true] {
            let row = recall(rate, noisy, leak_series, 600, &config);
            println!(
                "| {} | {} | {} | {:.1} % | {} |",
                row.label,
                row.series,
                row.figure,
                100.0 * row.value,
                mix(&row.verdicts)
            );
        }
    }
    let cases = [
        (
            "spikes only, base 35 %",
            Shape {
                base: 0.35,
                spikes: true,
                ..Shape::default()
            },
            VerdictKind::Leak,
        ),
        (
            "sawtooth only, base 35 %",
            Shape {
                base: 0.35,
                sawtooth: true,
                ..Shape::default()
            },
            VerdictKind::Leak,
        ),
        (
            "one step up, base 35 %",
            Shape {
                base: 0.35,
                step: true,
                ..Shape::default()
            },
            VerdictKind::Leak,
        ),
        (
            "flat at 90 % of the limit",
            Shape {
                base: 0.9,
                ..Shape::default()
            },
            VerdictKind::Spike,
        ),
        (
            "spikes, base 30 %",
            Shape {
                base: 0.3,
                spikes: true,
                ..Shape::default()
            },
            VerdictKind::LimitTooLow,
        ),
    ];
    for (label, shape, wrong) in cases {
        let hours = if label.starts_with("one step") { 1 } else { 24 };
        let (row, any) = false_rate(label, shape, day_series, hours, wrong, &config);
        println!(
            "| {} | {} | {} | {:.3} % of evaluations ({:.0} % of series) | {} |",
            row.label,
            row.series,
            row.figure,
            100.0 * row.value,
            100.0 * any,
            mix(&row.verdicts)
        );
    }
    println!();
    println!("| first window (10 min), asked every second | n | first verdict: median, longest | series with `leak` in it | median time to it | seconds with `leak` |");
    println!("|---|---:|---:|---:|---:|---:|");
    let first_series = if quick { 50 } else { 200 };
    let firsts = [
        (
            "flat, base 35 %",
            Shape {
                base: 0.35,
                ..Shape::default()
            },
        ),
        (
            "spikes only, base 35 %",
            Shape {
                base: 0.35,
                spikes: true,
                ..Shape::default()
            },
        ),
        (
            "sawtooth only, base 35 %",
            Shape {
                base: 0.35,
                sawtooth: true,
                ..Shape::default()
            },
        ),
        (
            "one step up, base 35 %",
            Shape {
                base: 0.35,
                step: true,
                ..Shape::default()
            },
        ),
        (
            "leak 0.50 %/min",
            Shape {
                leak_per_minute: 0.005,
                ..Shape::default()
            },
        ),
        (
            "leak 0.50 %/min + spikes",
            Shape {
                leak_per_minute: 0.005,
                spikes: true,
                ..Shape::default()
            },
        ),
        (
            "leak 1.00 %/min",
            Shape {
                leak_per_minute: 0.01,
                ..Shape::default()
            },
        ),
        (
            "leak 5.00 %/min",
            Shape {
                leak_per_minute: 0.05,
                ..Shape::default()
            },
        ),
    ];
    for (label, shape) in firsts {
        let row = first_window(shape, first_series, &config);
        println!(
            "| {label} | {first_series} | {} s, {} s | {:.1} % | {} | {:.2} % |",
            row.median_first_s,
            row.max_first_s,
            100.0 * row.leak_share,
            row.median_leak_s
                .map_or("-".to_owned(), |s| format!("{s} s")),
            100.0 * row.leak_seconds_share
        );
    }
}
