//! One tick's decisions, apart from the thread that takes the readings and does the I/O: feed
//! the reading to the detector (the one series), follow the verdict, say when the suspects'
//! next profile snapshot is due, compute the working set's time to the limit, and decide
//! whether to dump and why. Given the same readings, snapshots, requests and plumbing list it
//! decides the same, which is what its tests rely on.

use super::config::WatchConfig;
use super::request::DumpRequest;
use super::triggers::{Observation, Reason, Triggers};
use crate::detect::{
    Detector, DetectorReport, Point, Suspect, SuspectTracker, Verdict, VerdictKind,
};
use crate::memory::MemoryReading;
use crate::profile::Profile;
use crate::published::WatchReading;
use crate::statistics::{seconds_to_limit, theil_sen_slope};
use std::time::Instant;

/// Most points the working set's slope is computed over (evenly thinned beyond).
const TREND_MAX_POINTS: usize = 120;

/// What the thread read this tick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TickInput {
    pub(crate) now: Instant,
    pub(crate) unix_ms: u64,
    /// The heap's live bytes (exact counters).
    pub(crate) heap_live: u64,
    pub(crate) memory: MemoryReading,
    /// The allocator's resident bytes (fragmentation shows there).
    pub(crate) resident: Option<u64>,
}

/// What the tick asks of the thread while it decides, when it needs it.
pub(crate) trait TickSources {
    /// A profile snapshot, for the suspects (every `suspect_interval` after warm-up).
    fn snapshot(&mut self) -> Profile;
    /// The pending dump request, if any; it stays pending until a dump is decided. Asked after
    /// the suspects' snapshot, so a request made while it was taken is answered this tick.
    fn pending_request(&mut self) -> Option<DumpRequest>;
}

/// What the tick decided, for the thread to carry out.
#[derive(Debug, Clone)]
pub(crate) struct TickDecision {
    /// The reading to publish.
    pub(crate) reading: WatchReading,
    /// The verdict changed from this kind to the detector's current verdict.
    pub(crate) verdict_changed_from: Option<VerdictKind>,
    /// Dump now, for this reason. The pending request (if any) is answered by it.
    pub(crate) dump: Option<Reason>,
    /// Usage is below the first threshold (less the hysteresis): the headroom reserve, if
    /// released for a dump, may be taken again.
    pub(crate) retake_reserve: bool,
    /// Memory is short: usage at or above the first threshold (less the hysteresis), or the
    /// trend reaching the limit within the horizon. Then dumps are written before naming,
    /// and nothing loads symbols: no suspects' snapshot, no naming, no warming of the cache.
    pub(crate) pressure: bool,
    /// Wake early when the heap reaches this many live bytes: what separates the working set
    /// from the next threshold, on top of the heap now. `None`: no early wake.
    pub(crate) early_wake_at: Option<u64>,
}

/// The state the decisions carry from tick to tick.
#[derive(Debug)]
pub(crate) struct TickLogic {
    config: WatchConfig,
    triggers: Triggers,
    /// The one series: every reading goes here, and both the verdict and the working set's
    /// slope are read from it.
    detector: Detector,
    suspects: SuspectTracker,
    started: Instant,
    last_suspect_snapshot: Option<Instant>,
    /// A leak verdict waiting for its dump (held back by the rate limit).
    leak_dump_pending: bool,
}

impl TickLogic {
    pub(crate) fn new(config: WatchConfig, started: Instant) -> Self {
        TickLogic {
            triggers: Triggers::new(
                &config.thresholds,
                config.hysteresis,
                config.horizon,
                config.min_interval,
            ),
            detector: Detector::new(config.detector.clone()),
            suspects: SuspectTracker::default(),
            started,
            last_suspect_snapshot: None,
            leak_dump_pending: false,
            config,
        }
    }

    /// Feeds one reading and decides; also returns the folded stacks of the baseline when the
    /// suspects' snapshot taken this tick was the first.
    pub(crate) fn tick(
        &mut self,
        input: TickInput,
        sources: &mut impl TickSources,
    ) -> (TickDecision, Option<Vec<String>>) {
        let TickInput {
            now,
            unix_ms,
            heap_live,
            memory,
            resident,
        } = input;
        self.detector.push(
            Point::reading(unix_ms, heap_live, memory.working_set, resident)
                .with_usage(memory.usage, memory.limit),
        );
        let previous = self.detector.verdict().kind;
        let kind = self.detector.evaluate(memory.limit).kind;
        let verdict_changed_from = (kind != previous).then_some(previous);
        if verdict_changed_from.is_some() && kind == VerdictKind::Leak {
            self.leak_dump_pending = true;
        }
        let slope = self.working_set_slope();
        let eta = match (memory.limit, memory.working_set, slope) {
            (Some(limit), Some(ws), Some(slope)) => {
                seconds_to_limit(ws as f64, limit as f64, slope)
            }
            _ => None,
        };
        let fraction = memory.fraction();
        let first_threshold = self.config.thresholds.first().copied().unwrap_or(1.0);
        let retake_reserve = fraction.is_none_or(|f| f < first_threshold - self.config.hysteresis);
        let pressure = !retake_reserve
            || eta.is_some_and(|seconds| seconds <= self.config.horizon.as_secs_f64());
        // The suspects' snapshot names its stacks: not while memory is short.
        let baseline = if pressure {
            None
        } else {
            self.observe_suspects(now, unix_ms, sources)
        };

        let requested = match sources.pending_request() {
            Some(DumpRequest::OnDemand) => Some(Reason::OnDemand),
            Some(DumpRequest::Signal) => Some(Reason::Signal),
            None if self.leak_dump_pending => Some(Reason::Leak),
            None => None,
        };
        let seen = Observation {
            fraction,
            eta_seconds: eta,
        };
        let dump = self.triggers.evaluate(now, seen, requested);
        if let Some(reason) = &dump {
            if *reason == Reason::Leak {
                self.leak_dump_pending = false;
            }
            // Counted from the decision: the dump follows at once on the same thread.
            self.triggers.dumped(now);
        }
        let early_wake_at = match (
            memory.limit,
            memory.working_set,
            self.triggers.next_threshold(),
        ) {
            (Some(limit), Some(ws), Some(threshold)) => {
                let target_ws = (threshold * limit as f64) as u64;
                Some(heap_live + target_ws.saturating_sub(ws))
            }
            _ => None,
        };
        let decision = TickDecision {
            reading: WatchReading {
                unix_ms,
                limit_bytes: memory.limit,
                usage_bytes: memory.usage,
                working_set_bytes: memory.working_set,
                slope_bytes_per_second: slope,
                eta_seconds: eta,
            },
            verdict_changed_from,
            dump,
            retake_reserve,
            pressure,
            early_wake_at,
        };
        (decision, baseline)
    }

    /// The detector's report after the latest tick.
    pub(crate) fn report(&self) -> DetectorReport {
        DetectorReport {
            verdict: self.detector.verdict().clone(),
            suspects: self.suspects.suspects(),
            baseline_unix_ms: self.suspects.baseline_unix_ms(),
        }
    }

    pub(crate) fn verdict(&self) -> &Verdict {
        self.detector.verdict()
    }

    pub(crate) fn suspects(&self) -> Vec<Suspect> {
        self.suspects.suspects()
    }

    pub(crate) fn suspect_tracker(&self) -> &SuspectTracker {
        &self.suspects
    }

    /// The readings of the last `span_ms`, oldest first, as a dump's summary lists them.
    pub(crate) fn recent_series(&self, span_ms: u64) -> Vec<super::dump_summary::SeriesPoint> {
        self.detector
            .series()
            .recent(span_ms)
            .map(|p| super::dump_summary::SeriesPoint {
                unix_ms: p.unix_ms,
                heap_live_bytes: p.heap_max,
                usage_bytes: p.usage_max,
                working_set_bytes: p.working_set_max,
                limit_bytes: p.limit,
            })
            .collect()
    }

    /// Robust growth of the working set over the trend window, bytes per second.
    fn working_set_slope(&self) -> Option<f64> {
        let window_ms = self.config.trend_window.as_millis() as u64;
        let points: Vec<(f64, f64)> = self
            .detector
            .series()
            .recent(window_ms)
            .filter_map(|p| Some((p.unix_ms as f64 / 1000.0, p.working_set_max? as f64)))
            .collect();
        if points.len() < 5 {
            return None;
        }
        let step = points.len().div_ceil(TREND_MAX_POINTS);
        let thinned: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
        theil_sen_slope(&thinned)
    }

    /// Keeps a profile snapshot for the suspects every `suspect_interval` after warm-up; the
    /// baseline's folded stacks when this was the first.
    fn observe_suspects(
        &mut self,
        now: Instant,
        unix_ms: u64,
        sources: &mut impl TickSources,
    ) -> Option<Vec<String>> {
        if now.duration_since(self.started) < self.config.warmup {
            return None;
        }
        let due = self
            .last_suspect_snapshot
            .is_none_or(|t| now.duration_since(t) >= self.config.suspect_interval);
        if !due {
            return None;
        }
        let first = self.suspects.baseline_unix_ms().is_none();
        let profile = sources.snapshot();
        self.suspects
            .observe(unix_ms, &profile, &crate::plumbing::plumbing());
        self.last_suspect_snapshot = Some(now);
        if first {
            self.suspects.baseline_lines().map(<[String]>::to_vec)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMIT: u64 = 1 << 30;

    fn config() -> WatchConfig {
        WatchConfig {
            thresholds: vec![0.8, 0.9, 0.95],
            min_interval: Duration::from_secs(10),
            warmup: Duration::from_secs(60),
            suspect_interval: Duration::from_secs(60),
            ..WatchConfig::default()
        }
    }

    fn memory(working_set: u64) -> MemoryReading {
        MemoryReading {
            limit: Some(LIMIT),
            limit_source: "configured",
            usage: Some(working_set + 4096),
            working_set: Some(working_set),
            oom_kills: None,
        }
    }

    /// Empty snapshots (counted) and requests by second.
    struct Sources<R: Fn(u64) -> Option<DumpRequest>> {
        second: u64,
        snapshots: Vec<u64>,
        request: R,
    }

    impl<R: Fn(u64) -> Option<DumpRequest>> TickSources for Sources<R> {
        fn snapshot(&mut self) -> Profile {
            self.snapshots.push(self.second);
            Profile::default()
        }
        fn pending_request(&mut self) -> Option<DumpRequest> {
            (self.request)(self.second)
        }
    }

    fn no_requests(_: u64) -> Option<DumpRequest> {
        None
    }

    /// Runs one tick per second from `start`, the working set given per second; returns each
    /// tick's decision.
    fn run(
        logic: &mut TickLogic,
        start: Instant,
        seconds: std::ops::Range<u64>,
        working_set: impl Fn(u64) -> u64,
        request: impl Fn(u64) -> Option<DumpRequest>,
    ) -> Vec<TickDecision> {
        let mut sources = Sources {
            second: 0,
            snapshots: Vec::new(),
            request,
        };
        seconds
            .map(|s| {
                let ws = working_set(s);
                let input = TickInput {
                    now: start + Duration::from_secs(s),
                    unix_ms: 1_000_000 + s * 1000,
                    heap_live: ws / 2,
                    memory: memory(ws),
                    resident: Some(ws),
                };
                sources.second = s;
                logic.tick(input, &mut sources).0
            })
            .collect()
    }

    fn reasons(decisions: &[TickDecision]) -> Vec<(usize, Reason)> {
        decisions
            .iter()
            .enumerate()
            .filter_map(|(s, d)| Some((s, d.dump.clone()?)))
            .collect()
    }

    #[test]
    fn a_climb_dumps_at_each_threshold_and_publishes_what_it_read() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        // Flat at 50 % for a minute, then a jump to 85 %, 92 %, 97 %, 20 s apart.
        let ws = |s: u64| match s {
            0..60 => LIMIT / 2,
            60..80 => LIMIT * 85 / 100,
            80..100 => LIMIT * 92 / 100,
            _ => LIMIT * 97 / 100,
        };
        let decisions = run(&mut logic, start, 0..120, ws, no_requests);
        let thresholds: Vec<(usize, f64)> = reasons(&decisions)
            .into_iter()
            .filter_map(|(s, r)| match r {
                Reason::Threshold { threshold } => Some((s, threshold)),
                _ => None,
            })
            .collect();
        assert_eq!(thresholds, [(60, 0.8), (80, 0.9), (100, 0.95)]);
        let last = decisions.last().unwrap();
        assert_eq!(last.reading.limit_bytes, Some(LIMIT));
        assert_eq!(last.reading.working_set_bytes, Some(LIMIT * 97 / 100));
        assert_eq!(last.reading.usage_bytes, Some(LIMIT * 97 / 100 + 4096));
        assert_eq!(last.reading.unix_ms, 1_000_000 + 119_000);
        // Every threshold fired: nothing left to wake early for; above the first: no reserve.
        assert_eq!(last.early_wake_at, None);
        assert!(!last.retake_reserve);
        // The summary's series is the detector's own: one point a tick, within the span.
        let series = logic.recent_series(30_000);
        assert_eq!(series.len(), 31);
        assert_eq!(
            series.last().unwrap().working_set_bytes,
            Some(LIMIT * 97 / 100)
        );
        assert_eq!(series.last().unwrap().heap_live_bytes, LIMIT * 97 / 200);
        assert_eq!(series.last().unwrap().limit_bytes, Some(LIMIT));
    }

    #[test]
    fn the_early_wake_is_set_at_the_heap_that_reaches_the_next_threshold() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        let decisions = run(&mut logic, start, 0..3, |_| LIMIT / 2, no_requests);
        let d = &decisions[2];
        // 30 % of the limit separates the working set from 80 %: the heap (a quarter of the
        // limit here) may grow by that much.
        let target = (0.8 * LIMIT as f64) as u64 - LIMIT / 2;
        assert_eq!(d.early_wake_at, Some(LIMIT / 4 + target));
        assert!(d.retake_reserve);
        assert!(d.dump.is_none());
    }

    #[test]
    fn a_rising_working_set_predicts_the_limit_and_dumps_once_within_the_horizon() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        // 10 MiB a second from 60 % of the limit: 80 % is 20 s away, the limit 40 s away.
        let ws = |s: u64| LIMIT * 6 / 10 + s * (10 << 20);
        let decisions = run(&mut logic, start, 0..15, ws, no_requests);
        let eta = decisions[14].reading.eta_seconds.expect("a prediction");
        let slope = decisions[14].reading.slope_bytes_per_second.unwrap();
        assert!((slope - (10 << 20) as f64).abs() < 1.0, "{slope}");
        let expected = (LIMIT as f64 - ws(14) as f64) / (10 << 20) as f64;
        assert!((eta - expected).abs() < 0.01, "{eta} vs {expected}");
        // Inside the default 60 s horizon from the first tick with a slope (5 points): one
        // `eta` dump, not one per tick.
        let etas: Vec<usize> = reasons(&decisions)
            .into_iter()
            .filter(|(_, r)| matches!(r, Reason::Eta { .. }))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(etas, [4]);
        assert!(decisions[..4]
            .iter()
            .all(|d| d.reading.eta_seconds.is_none()));
    }

    #[test]
    fn requests_are_answered_within_the_rate_limit_and_stay_pending_until_then() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        // A request at 0 s dumps; one at 1 s waits for the 10 s interval and is answered at
        // 10 s (the thread keeps it pending until a dump is decided).
        let request = |s: u64| match s {
            0 => Some(DumpRequest::OnDemand),
            1..=10 => Some(DumpRequest::Signal),
            _ => None,
        };
        let decisions = run(&mut logic, start, 0..12, |_| LIMIT / 2, request);
        assert_eq!(
            reasons(&decisions),
            [(0, Reason::OnDemand), (10, Reason::Signal)]
        );
    }

    #[test]
    fn a_leak_verdict_is_dumped_once_and_suspects_wait_for_warm_up() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        let mut sources = Sources {
            second: 0,
            snapshots: Vec::new(),
            request: no_requests,
        };
        let mut leak_dumps = Vec::new();
        let mut changes = Vec::new();
        let mut baselines = 0;
        for s in 0..400u64 {
            // A heap rising 1 % of the limit a minute: the default detector calls it a leak
            // at 330 s (see `detect`'s tests).
            let ws = (300 << 20) + s * (LIMIT / 100 / 60);
            let input = TickInput {
                now: start + Duration::from_secs(s),
                unix_ms: 1_000_000 + s * 1000,
                heap_live: ws,
                memory: memory(ws),
                resident: Some(ws),
            };
            sources.second = s;
            let (decision, baseline) = logic.tick(input, &mut sources);
            baselines += usize::from(baseline.is_some());
            if let Some(from) = decision.verdict_changed_from {
                changes.push((s, from, logic.verdict().kind));
            }
            if decision.dump == Some(Reason::Leak) {
                leak_dumps.push(s);
            }
        }
        let leak_at = changes
            .iter()
            .find(|(_, _, to)| *to == VerdictKind::Leak)
            .map(|(s, _, _)| *s)
            .expect("a leak verdict");
        assert_eq!(leak_at, 330, "changes: {changes:?}");
        assert_eq!(leak_dumps, [leak_at], "changes: {changes:?}");
        assert_eq!(logic.report().verdict.kind, VerdictKind::Leak);
        // Snapshots after the 60 s warm-up, every 60 s; the first is the baseline.
        assert_eq!(sources.snapshots, [60, 120, 180, 240, 300, 360]);
        assert_eq!(baselines, 1);
        assert_eq!(logic.report().baseline_unix_ms, Some(1_000_000 + 60_000));
    }

    #[test]
    fn pressure_defers_the_suspects_snapshot_until_it_passes() {
        let start = Instant::now();
        let config = WatchConfig {
            warmup: Duration::ZERO,
            suspect_interval: Duration::from_secs(1),
            ..config()
        };
        let mut logic = TickLogic::new(config, start);
        let mut sources = Sources {
            second: 0,
            snapshots: Vec::new(),
            request: no_requests,
        };
        let mut pressure = Vec::new();
        for s in 0..6u64 {
            // 50 %, then 85 % (above the first threshold) for two ticks, then 50 % again.
            let ws = if (2..4).contains(&s) {
                LIMIT * 85 / 100
            } else {
                LIMIT / 2
            };
            let input = TickInput {
                now: start + Duration::from_secs(s),
                unix_ms: 1_000_000 + s * 1000,
                heap_live: ws / 2,
                memory: memory(ws),
                resident: Some(ws),
            };
            sources.second = s;
            pressure.push(logic.tick(input, &mut sources).0.pressure);
        }
        assert_eq!(pressure, [false, false, true, true, false, false]);
        assert_eq!(
            sources.snapshots,
            [0, 1, 4, 5],
            "none while memory is short"
        );
    }

    #[test]
    fn a_fast_climb_is_pressure_before_the_first_threshold() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        // 20 MiB a second from 40 % of the limit: the limit is about 30 s away, inside the
        // 60 s horizon, while usage is still far below 80 %.
        let ws = |s: u64| LIMIT * 4 / 10 + s * (20 << 20);
        let decisions = run(&mut logic, start, 0..6, ws, no_requests);
        assert!(!decisions[0].pressure);
        assert!(
            decisions[5].pressure,
            "{:?}",
            decisions[5].reading.eta_seconds
        );
        assert!(decisions[5].retake_reserve);
    }

    #[test]
    fn without_a_limit_nothing_but_requests_dump() {
        let start = Instant::now();
        let mut logic = TickLogic::new(config(), start);
        let mut sources = Sources {
            second: 0,
            snapshots: Vec::new(),
            request: |s| (s == 3).then_some(DumpRequest::OnDemand),
        };
        let unlimited = MemoryReading {
            limit: None,
            limit_source: "none",
            usage: Some(1 << 20),
            working_set: Some(1 << 20),
            oom_kills: None,
        };
        for s in 0..5u64 {
            let input = TickInput {
                now: start + Duration::from_secs(s),
                unix_ms: s * 1000,
                heap_live: 1 << 19,
                memory: unlimited,
                resident: None,
            };
            sources.second = s;
            let (d, _) = logic.tick(input, &mut sources);
            assert_eq!(d.reading.limit_bytes, None);
            assert_eq!(d.early_wake_at, None);
            assert!(d.retake_reserve);
            assert!(!d.pressure);
            assert_eq!(d.dump, (s == 3).then_some(Reason::OnDemand));
        }
    }
}
