//! Telling a leak from a spike from a limit that is too low, in the process, with evidence.
//!
//! The watch thread feeds every tick into a [`SeriesStore`] (fixed memory, three resolutions),
//! and [`classify`] walks the OOM decision tree on the last window of it: the heap's floor
//! (windowed minima) is tracked apart from its peaks; a floor that rises significantly
//! (Mann–Kendall) at a meaningful rate (Theil–Sen) is a `leak`, peaks that return to a flat
//! floor are a `spike`, a flat floor near the limit is `limit_too_low`, a flat heap under rising
//! resident memory is `fragmentation`. Profile snapshots taken at intervals name the call sites
//! whose live bytes keep rising ([`SuspectTracker`]), and a baseline taken after warm-up gives
//! the differential flamegraph.
//!
//! Pure: series in, verdicts and suspects out. The watch feeds it its readings and publishes
//! what it says (see [`crate::published`]); nothing here reads `/proc`, the allocator or any
//! global state, so the same machinery is usable offline on any series: see
//! `tools/detector_eval.rs`.

mod series;
mod suspects;
mod verdict;

pub use crate::statistics::{mann_kendall, MannKendall};
pub use series::{Point, SeriesStore, RECENT_CAPACITY, RECENT_SPAN_MS};
pub use suspects::{Suspect, SuspectTracker, BASELINE_STACKS, SITES_PER_SNAPSHOT, SNAPSHOTS_KEPT};
pub use verdict::{classify, DetectorConfig, Verdict, VerdictKind};

/// The detector: the series, and verdicts that stick. A `leak` is only declared once its
/// evidence has held for [`DetectorConfig::confirm`]; other verdicts apply at once.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    store: SeriesStore,
    verdict: Verdict,
    leak_since_ms: Option<u64>,
}

impl Detector {
    /// A detector with these settings and an empty series.
    pub fn new(config: DetectorConfig) -> Self {
        Detector {
            verdict: classify(&[], None, &config),
            config,
            store: SeriesStore::default(),
            leak_since_ms: None,
        }
    }

    /// Adds a reading.
    pub fn push(&mut self, point: Point) {
        self.store.push(point);
    }

    /// The series so far.
    pub fn series(&self) -> &SeriesStore {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Re-reads the window against `limit`; returns the verdict (which may be unchanged).
    ///
    /// ```
    /// use heapwatch::detect::{Detector, DetectorConfig, Point, VerdictKind};
    /// let mut detector = Detector::new(DetectorConfig::default());
    /// for s in 0..900u64 {
    ///     detector.push(Point::reading(s * 1000, (100 << 20) + s * 40_000, None, None));
    ///     detector.evaluate(Some(1 << 30));
    /// }
    /// assert_eq!(detector.verdict().kind, VerdictKind::Leak);
    /// ```
    pub fn evaluate(&mut self, limit: Option<u64>) -> &Verdict {
        let window = self.store.window(self.config.window.as_millis() as u64);
        let now_ms = window.last().map_or(0, |p| p.unix_ms);
        let candidate = classify(&window, limit, &self.config);
        if candidate.kind == VerdictKind::Leak {
            let since = *self.leak_since_ms.get_or_insert(now_ms);
            let confirmed = now_ms.saturating_sub(since) >= self.config.confirm.as_millis() as u64;
            if confirmed || self.verdict.kind == VerdictKind::Leak {
                self.verdict = candidate;
            } else {
                // Not yet: keep the previous kind, with fresh figures.
                let kind = self.verdict.kind;
                self.verdict = Verdict {
                    kind,
                    advice: kind.advice().to_owned(),
                    ..candidate
                };
            }
        } else {
            self.leak_since_ms = None;
            self.verdict = candidate;
        }
        &self.verdict
    }

    /// The current verdict.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }
}

/// The detector's verdict and suspects at one moment (what the watch publishes each tick).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorReport {
    /// The current verdict.
    pub verdict: Verdict,
    /// The growing call sites, fastest first.
    pub suspects: Vec<Suspect>,
    /// When the baseline of the differential flamegraph was taken (ms since the epoch).
    pub baseline_unix_ms: Option<u64>,
}

/// The differential flamegraph of `now` against `baseline` (folded stacks of the baseline
/// snapshot; empty before one was taken).
#[cfg_attr(not(feature = "http"), allow(dead_code))] // served by the listener's leak page
pub(crate) fn write_diff<W: std::io::Write>(
    baseline: &[String],
    now: &crate::profile::Profile,
    writer: W,
) -> std::io::Result<()> {
    suspects::write_diff(baseline, now, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds of 1-s ticks until the first verdict other than `unknown`, and until `leak`.
    fn first_verdicts(heap_at: impl Fn(u64) -> u64) -> (Option<u64>, Option<u64>) {
        let mut detector = Detector::new(DetectorConfig::default());
        let (mut first, mut leak) = (None, None);
        for s in 0..600u64 {
            detector.push(Point::reading(s * 1000, heap_at(s), None, None));
            let kind = detector.evaluate(Some(1 << 30)).kind;
            if kind != VerdictKind::Unknown {
                first = first.or(Some(s));
            }
            if kind == VerdictKind::Leak {
                leak = leak.or(Some(s));
            }
        }
        (first, leak)
    }

    // The figures the guide (docs/verdicts.md) gives for the defaults: half the 10-minute window before any
    // verdict, and the 30 s a leak must hold on top for a leak.
    #[test]
    fn first_verdict_after_five_minutes_first_leak_after_five_and_a_half() {
        let flat = first_verdicts(|s| (300 << 20) + (s % 7) * 4096);
        assert_eq!(flat, (Some(300), None));
        // 1 % of the limit a minute.
        let leak = first_verdicts(|s| (300 << 20) + s * ((1 << 30) / 100 / 60));
        assert_eq!(leak, (Some(330), Some(330)));
    }
}
