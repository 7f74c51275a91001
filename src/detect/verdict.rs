//! The OOM decision tree, walked on a window of the series: is the floor rising (a leak), do
//! peaks come and go over a flat floor (a spike), is a flat floor close to the limit (the limit
//! is too low), or is the heap flat while resident memory rises (fragmentation)?
//!
//! The floor is the trailing minimum of the heap over `floor_window`, taken at `segments` evenly
//! spaced times of the window: a spike or a cache that empties within `floor_window` does not
//! move it. A leak is a floor with a significant monotonic trend (Mann–Kendall, one-sided
//! p < `significance`) whose robust slope (Theil–Sen) is at least `min_leak_per_minute` of the
//! scale (the limit, or the floor itself without one).

use super::series::Point;
use crate::statistics::{mann_kendall, median, theil_sen_slope};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the series says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Too little data yet.
    Unknown,
    /// Nothing to act on.
    Steady,
    /// The floor rises steadily: memory that is never given back.
    Leak,
    /// Peaks that return to the floor: load, not a leak.
    Spike,
    /// A flat floor close to the limit.
    LimitTooLow,
    /// The heap is flat while resident memory rises.
    Fragmentation,
}

impl VerdictKind {
    /// The name used in JSON, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            VerdictKind::Unknown => "unknown",
            VerdictKind::Steady => "steady",
            VerdictKind::Leak => "leak",
            VerdictKind::Spike => "spike",
            VerdictKind::LimitTooLow => "limit_too_low",
            VerdictKind::Fragmentation => "fragmentation",
        }
    }

    /// What to do about it: the usual remedy for this kind of memory growth.
    pub fn advice(self) -> &'static str {
        match self {
            VerdictKind::Unknown => "not enough data yet",
            VerdictKind::Steady => "no action needed",
            VerdictKind::Leak => {
                "memory leak: fix the code, not the limits (raising the limit only delays the kill); see the growing call sites"
            }
            VerdictKind::Spike => {
                "traffic spikes: the service is under-provisioned for peak load; increase resources or add autoscaling (HPA)"
            }
            VerdictKind::LimitTooLow => {
                "limit too low: normal operation sits near the limit; increase the memory limit by 50-100 %"
            }
            VerdictKind::Fragmentation => {
                "fragmentation: the heap is flat but resident memory grows; tune the allocator (jemalloc dirty/muzzy decay, background threads) or reduce churn of differently sized blocks"
            }
        }
    }
}

/// A verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The verdict.
    pub kind: VerdictKind,
    /// How sure, in [0, 1] (for a leak: 1 − the trend test's p-value).
    pub confidence: f64,
    /// Robust slope of the heap floor, bytes per second.
    pub floor_slope_bytes_per_second: f64,
    /// Latest floor of the heap, bytes.
    pub floor_bytes: u64,
    /// Highest heap in the window, bytes.
    pub peak_bytes: u64,
    /// Seconds to the limit at the floor's slope; `None` without a limit or a rising floor.
    pub eta_seconds: Option<f64>,
    /// What to do, in words.
    pub advice: String,
}

/// The detector's settings.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// The window the verdict looks at.
    pub window: Duration,
    /// Trailing span of each floor value (its minimum).
    pub floor_window: Duration,
    /// Floor values taken across the window.
    pub segments: usize,
    /// One-sided p-value below which a rising floor is a trend.
    pub significance: f64,
    /// Smallest floor growth called a leak, as a fraction of the limit per minute.
    pub min_leak_per_minute: f64,
    /// The same without a limit, as a fraction of the floor itself per minute: with nothing to
    /// run into, only growth that is large relative to the heap matters.
    pub min_leak_per_minute_without_limit: f64,
    /// Peaks this far above the floor (fraction of the scale) are spikes.
    pub spike_fraction: f64,
    /// A flat floor above this fraction of the limit means the limit is too low.
    pub near_limit_fraction: f64,
    /// How long the evidence for a leak must hold before the verdict says so (a
    /// [`Detector`](crate::detect::Detector) setting; `classify` looks at one window).
    pub confirm: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            window: Duration::from_secs(600),
            floor_window: Duration::from_secs(120),
            segments: 20,
            significance: 5e-4,
            min_leak_per_minute: 1e-3,
            min_leak_per_minute_without_limit: 1e-2,
            spike_fraction: 0.1,
            near_limit_fraction: 0.85,
            confirm: Duration::from_secs(30),
        }
    }
}

/// Reads a window of points (oldest first) against the limit.
///
/// ```
/// use heapwatch::detect::{classify, DetectorConfig, Point, VerdictKind};
/// let mib = 1u64 << 20;
/// // Ten minutes of a heap that grows 2 MiB a minute under a 256 MiB limit.
/// let points: Vec<Point> = (0..600u64)
///     .map(|s| Point::reading(s * 1000, 64 * mib + s * 2 * mib / 60, None, None))
///     .collect();
/// let verdict = classify(&points, Some(256 * mib), &DetectorConfig::default());
/// assert_eq!(verdict.kind, VerdictKind::Leak);
/// assert!(verdict.eta_seconds.unwrap() > 60.0);
/// ```
pub fn classify(points: &[Point], limit: Option<u64>, config: &DetectorConfig) -> Verdict {
    let unknown = |floor_bytes, peak_bytes| Verdict {
        kind: VerdictKind::Unknown,
        confidence: 0.0,
        floor_slope_bytes_per_second: 0.0,
        floor_bytes,
        peak_bytes,
        eta_seconds: None,
        advice: VerdictKind::Unknown.advice().to_owned(),
    };
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return unknown(0, 0);
    };
    let peak_bytes = points.iter().map(|p| p.heap_max).max().unwrap_or(0);
    let span_ms = last.unix_ms - first.unix_ms;
    if span_ms < config.window.as_millis() as u64 / 2 || points.len() < 8 {
        return unknown(last.heap_min, peak_bytes);
    }

    let heap = Floors::of(points, config, |p| Some((p.heap_min, p.heap_max)));
    let floor_bytes = heap.floors.last().map_or(0, |&(_, f)| f as u64);
    let scale = limit
        .map(|l| l as f64)
        .unwrap_or_else(|| heap.median_floor().max(1.0));
    let min_leak_per_minute = if limit.is_some() {
        config.min_leak_per_minute
    } else {
        config.min_leak_per_minute_without_limit
    };
    let min_slope_per_second = min_leak_per_minute * scale / 60.0;
    let (rising, p, slope) = heap.trend(min_slope_per_second, config.significance);
    let working_set_floor = Floors::of(points, config, |p| {
        Some((p.working_set_min?, p.working_set_max?))
    })
    .last_floor();
    let current = working_set_floor.unwrap_or(floor_bytes as f64);
    let eta_seconds = limit
        .filter(|_| slope > 0.0)
        .map(|l| ((l as f64 - current) / slope).max(0.0));
    let verdict = |kind: VerdictKind, confidence: f64| Verdict {
        kind,
        confidence: confidence.clamp(0.0, 1.0),
        floor_slope_bytes_per_second: slope,
        floor_bytes,
        peak_bytes,
        eta_seconds,
        advice: kind.advice().to_owned(),
    };

    if rising {
        return verdict(VerdictKind::Leak, 1.0 - p);
    }
    if let Some(limit) = limit {
        let floor = working_set_floor.unwrap_or(heap.median_floor());
        let near = config.near_limit_fraction * limit as f64;
        if floor >= near {
            return verdict(
                VerdictKind::LimitTooLow,
                0.5 + 0.5 * ((floor - near) / (limit as f64 - near).max(1.0)).min(1.0),
            );
        }
    }
    let resident = Floors::of(points, config, |p| p.resident_min.map(|r| (r, r)));
    if resident.floors.len() >= 4 && p > 0.05 {
        let (resident_rising, resident_p, _) =
            resident.trend(min_slope_per_second, config.significance);
        let gap_grows = match (resident.floors.first(), resident.floors.last()) {
            (Some(&(_, r0)), Some(&(_, r1))) => {
                let h0 = heap.floors.first().map_or(0.0, |f| f.1);
                let h1 = heap.floors.last().map_or(0.0, |f| f.1);
                (r1 - h1) - (r0 - h0) > min_leak_per_minute * scale
            }
            _ => false,
        };
        if resident_rising && gap_grows {
            return verdict(VerdictKind::Fragmentation, 1.0 - resident_p);
        }
    }
    let spike_height = peak_bytes as f64 - heap.median_floor();
    let threshold = config.spike_fraction * scale;
    if spike_height >= threshold {
        return verdict(
            VerdictKind::Spike,
            (spike_height / (2.0 * threshold)).min(1.0),
        );
    }
    verdict(VerdictKind::Steady, p.min(1.0))
}

/// Floor values of one figure across the window: (seconds, bytes).
struct Floors {
    floors: Vec<(f64, f64)>,
}

impl Floors {
    fn of(
        points: &[Point],
        config: &DetectorConfig,
        figure: impl Fn(&Point) -> Option<(u64, u64)>,
    ) -> Floors {
        let values: Vec<(u64, u64)> = points
            .iter()
            .filter_map(|p| Some((p.unix_ms, figure(p)?.0)))
            .collect();
        let (Some(first), Some(last)) = (values.first(), values.last()) else {
            return Floors { floors: Vec::new() };
        };
        let floor_ms = config.floor_window.as_millis() as u64;
        // Floors are taken only where a whole trailing window of data exists (when there is
        // room for a few): a partial window at the start would repeat the same minimum.
        let end = last.0;
        let start = if end - first.0 >= 2 * floor_ms {
            first.0 + floor_ms
        } else {
            first.0
        };
        let segments = config.segments.max(4) as u64;
        let mut floors = Vec::with_capacity(segments as usize);
        let mut from = 0;
        for k in 0..segments {
            let at = start + (end - start) * (k + 1) / segments;
            while values[from].0 + floor_ms < at {
                from += 1;
            }
            let floor = values[from..]
                .iter()
                .take_while(|(t, _)| *t <= at)
                .map(|&(_, v)| v)
                .min();
            if let Some(floor) = floor {
                floors.push(((at - start) as f64 / 1000.0, floor as f64));
            }
        }
        Floors { floors }
    }

    fn median_floor(&self) -> f64 {
        let mut values: Vec<f64> = self.floors.iter().map(|f| f.1).collect();
        median(&mut values).unwrap_or(0.0)
    }

    fn last_floor(&self) -> Option<f64> {
        self.floors.last().map(|f| f.1)
    }

    /// (significantly rising, one-sided p, Theil–Sen slope per second). Rising also needs
    /// the floor to still climb in the later half of the window: a leak keeps going, while a
    /// step (a cache warmed once, a config reload) is flat after it.
    fn trend(&self, min_slope_per_second: f64, significance: f64) -> (bool, f64, f64) {
        let values: Vec<f64> = self.floors.iter().map(|f| f.1).collect();
        let Some(mk) = mann_kendall(&values) else {
            return (false, 1.0, 0.0);
        };
        let slope = theil_sen_slope(&self.floors).unwrap_or(0.0);
        let late = &self.floors[self.floors.len() / 2..];
        let half_rises = |half: &[(f64, f64)]| {
            theil_sen_slope(half).is_some_and(|s| s >= min_slope_per_second / 2.0)
        };
        let rising =
            mk.p_increasing < significance && slope >= min_slope_per_second && half_rises(late);
        (rising, mk.p_increasing, slope)
    }
}
