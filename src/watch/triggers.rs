//! When to dump: thresholds of the limit (each once per climb, re-armed when usage falls back
//! below it by the hysteresis), a predicted time to the limit under the horizon (once per
//! approach, re-armed the same way: when usage falls back by the hysteresis below where it
//! fired), and requests (API, SIGUSR1) — rate-limited, except that a higher threshold than the
//! last dump's always goes through, so a fast climb still gets its dump at 95 % after one at
//! 80 %.

use crate::published::ReasonKind;
use std::time::{Duration, Instant};

/// Why a dump set was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Usage crossed this fraction of the limit.
    Threshold {
        /// The threshold crossed, as a fraction of the limit.
        threshold: f64,
    },
    /// The trend predicted the limit within the horizon.
    Eta {
        /// Predicted seconds to the limit.
        seconds: f64,
    },
    /// Asked for through the API ([`WatchHandle::dump_now`](crate::watch::WatchHandle::dump_now)).
    OnDemand,
    /// Asked for with SIGUSR1.
    Signal,
    /// The leak detector's verdict turned to `leak`.
    Leak,
}

impl Reason {
    /// The reason's kind; its [`name`](ReasonKind::name) is what the JSON summary says:
    /// `threshold`, `eta`, `on_demand`, `signal`, `leak`.
    pub fn kind(&self) -> ReasonKind {
        match self {
            Reason::Threshold { .. } => ReasonKind::Threshold,
            Reason::Eta { .. } => ReasonKind::Eta,
            Reason::OnDemand => ReasonKind::OnDemand,
            Reason::Signal => ReasonKind::Signal,
            Reason::Leak => ReasonKind::Leak,
        }
    }

    /// A short form for file names: `threshold-90`, `eta`, `on-demand`, `signal`.
    pub fn slug(&self) -> String {
        match self {
            Reason::Threshold { threshold } => format!("threshold-{:.0}", threshold * 100.0),
            other => other.kind().name().replace('_', "-"),
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Reason::Threshold { threshold } => {
                format!("usage crossed {:.0} % of the limit", threshold * 100.0)
            }
            Reason::Eta { seconds } => {
                format!("the trend reaches the limit in {seconds:.0} s")
            }
            Reason::OnDemand => "requested through the API".to_owned(),
            Reason::Signal => "requested with SIGUSR1".to_owned(),
            Reason::Leak => "the leak detector found a steadily rising heap floor".to_owned(),
        }
    }
}

/// The trigger state carried from tick to tick.
#[derive(Debug)]
pub(crate) struct Triggers {
    thresholds: Vec<f64>,
    fired: Vec<bool>,
    hysteresis: f64,
    horizon: Duration,
    /// Usage (fraction of the limit) when the time-to-limit dump fired; `None` while armed.
    /// The prediction itself cannot re-arm it: on a plateau the slope wavers around zero, and
    /// "no prediction" then "the limit in 0 s" would repeat a dump of the same situation
    /// every time it wavers, rotating away the dumps that show the climb.
    eta_fired_at: Option<f64>,
    min_interval: Duration,
    last_dump: Option<Instant>,
    /// The highest threshold dumped for during the current climb.
    climb_high: Option<f64>,
}

/// What the watch thread saw this tick.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Observation {
    /// Usage (working set) over the limit; `None` without a limit.
    pub fraction: Option<f64>,
    /// Predicted seconds to the limit; `None` when not rising or no limit.
    pub eta_seconds: Option<f64>,
}

impl Triggers {
    pub(crate) fn new(
        thresholds: &[f64],
        hysteresis: f64,
        horizon: Duration,
        min_interval: Duration,
    ) -> Self {
        Triggers {
            thresholds: thresholds.to_vec(),
            fired: vec![false; thresholds.len()],
            hysteresis,
            horizon,
            eta_fired_at: None,
            min_interval,
            last_dump: None,
            climb_high: None,
        }
    }

    /// The next threshold not yet fired, as a fraction of the limit (for the early wake).
    pub(crate) fn next_threshold(&self) -> Option<f64> {
        self.thresholds
            .iter()
            .zip(&self.fired)
            .find(|(_, fired)| !**fired)
            .map(|(t, _)| *t)
    }

    /// Decides whether to dump now. `requested` is a pending request, if any. The caller calls
    /// [`Triggers::dumped`] once the dump is written (or failed: it is not retried at once).
    pub(crate) fn evaluate(
        &mut self,
        now: Instant,
        seen: Observation,
        requested: Option<Reason>,
    ) -> Option<Reason> {
        if let Some(fraction) = seen.fraction {
            for (threshold, fired) in self.thresholds.iter().zip(self.fired.iter_mut()) {
                if *fired && fraction < threshold - self.hysteresis {
                    *fired = false;
                }
            }
            if self.fired.iter().all(|f| !f) {
                self.climb_high = None;
            }
        }
        if let (Some(fired_at), Some(fraction)) = (self.eta_fired_at, seen.fraction) {
            if fraction < fired_at - self.hysteresis {
                self.eta_fired_at = None;
            }
        }

        let rate_limited = self
            .last_dump
            .is_some_and(|last| now.duration_since(last) < self.min_interval);

        if let Some(fraction) = seen.fraction {
            let crossed = self
                .thresholds
                .iter()
                .zip(&self.fired)
                .rposition(|(t, fired)| !fired && fraction >= *t);
            if let Some(index) = crossed {
                let threshold = self.thresholds[index];
                let higher_than_climb = self.climb_high.is_none_or(|high| threshold > high);
                if !rate_limited || higher_than_climb {
                    for (t, fired) in self.thresholds.iter().zip(self.fired.iter_mut()) {
                        if fraction >= *t {
                            *fired = true;
                        }
                    }
                    self.climb_high = Some(threshold);
                    return Some(Reason::Threshold { threshold });
                }
            }
        }
        if rate_limited {
            return None;
        }
        if let Some(seconds) = seen.eta_seconds {
            if self.eta_fired_at.is_none() && seconds <= self.horizon.as_secs_f64() {
                // A prediction needs a limit, so the fraction is known; were it not, nothing
                // would re-arm the trigger until restart, which errs towards fewer dumps.
                self.eta_fired_at = Some(seen.fraction.unwrap_or(f64::NEG_INFINITY));
                return Some(Reason::Eta { seconds });
            }
        }
        requested
    }

    /// Records that a dump was attempted now.
    pub(crate) fn dumped(&mut self, now: Instant) {
        self.last_dump = Some(now);
    }

    /// Whether a request would be held back by the rate limit now.
    #[cfg(test)]
    pub(crate) fn rate_limited(&self, now: Instant) -> bool {
        self.last_dump
            .is_some_and(|last| now.duration_since(last) < self.min_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triggers() -> Triggers {
        Triggers::new(
            &[0.8, 0.9, 0.95],
            0.05,
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
    }

    fn at(fraction: f64) -> Observation {
        Observation {
            fraction: Some(fraction),
            eta_seconds: None,
        }
    }

    #[test]
    fn each_threshold_once_per_climb_with_hysteresis() {
        let mut t = triggers();
        let start = Instant::now();
        let s = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(t.evaluate(s(0), at(0.5), None), None);
        assert_eq!(
            t.evaluate(s(10), at(0.81), None),
            Some(Reason::Threshold { threshold: 0.8 })
        );
        t.dumped(s(10));
        // Hovering around 80 % does not dump again…
        assert_eq!(t.evaluate(s(20), at(0.79), None), None);
        assert_eq!(t.evaluate(s(30), at(0.81), None), None);
        // …until usage has fallen below 75 % and climbs again.
        assert_eq!(t.evaluate(s(40), at(0.70), None), None);
        assert_eq!(
            t.evaluate(s(50), at(0.82), None),
            Some(Reason::Threshold { threshold: 0.8 })
        );
    }

    #[test]
    fn a_fast_climb_gets_the_highest_threshold_even_inside_the_rate_limit() {
        let mut t = triggers();
        let start = Instant::now();
        assert_eq!(
            t.evaluate(start, at(0.85), None),
            Some(Reason::Threshold { threshold: 0.8 })
        );
        t.dumped(start);
        let soon = start + Duration::from_millis(300);
        assert_eq!(
            t.evaluate(soon, at(0.99), None),
            Some(Reason::Threshold { threshold: 0.95 }),
            "skipping from 85 % to 99 % dumps once, for 95 %"
        );
        t.dumped(soon);
        assert_eq!(t.next_threshold(), None);
        assert_eq!(t.evaluate(soon, at(0.99), None), None);
    }

    #[test]
    fn requests_and_eta_are_rate_limited() {
        let mut t = triggers();
        let start = Instant::now();
        assert_eq!(
            t.evaluate(start, at(0.1), Some(Reason::OnDemand)),
            Some(Reason::OnDemand)
        );
        t.dumped(start);
        let soon = start + Duration::from_secs(1);
        assert_eq!(t.evaluate(soon, at(0.1), Some(Reason::Signal)), None);
        assert!(t.rate_limited(soon));
        let eta = Observation {
            fraction: Some(0.3),
            eta_seconds: Some(30.0),
        };
        assert_eq!(
            t.evaluate(soon, eta, None),
            None,
            "held back, not forgotten"
        );
        let later = start + Duration::from_secs(6);
        assert_eq!(
            t.evaluate(later, eta, None),
            Some(Reason::Eta { seconds: 30.0 })
        );
        t.dumped(later);
        // Once per approach: re-armed only when usage falls back by the hysteresis.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(t.evaluate(much_later, eta, None), None);
        let receded = Observation {
            fraction: Some(0.2),
            eta_seconds: None,
        };
        assert_eq!(t.evaluate(much_later, receded, None), None);
        assert_eq!(
            t.evaluate(much_later, eta, None),
            Some(Reason::Eta { seconds: 30.0 })
        );
    }

    #[test]
    fn a_wavering_prediction_on_a_plateau_dumps_once() {
        // The load stopped with usage over the limit: the slope wavers around zero, so the
        // prediction comes and goes ("none", then "the limit in 0 s").
        let mut t = triggers();
        let start = Instant::now();
        let mut eta_dumps = 0;
        for minute in 0..30u64 {
            let now = start + Duration::from_secs(60 * minute);
            let fraction = 1.02 + 0.005 * (minute % 2) as f64;
            let seen = Observation {
                fraction: Some(fraction),
                eta_seconds: (minute % 2 == 1).then_some(0.0),
            };
            if let Some(reason) = t.evaluate(now, seen, None) {
                if reason.kind() == ReasonKind::Eta {
                    eta_dumps += 1;
                }
                t.dumped(now);
            }
        }
        assert_eq!(eta_dumps, 1, "one ETA dump for one plateau");
        // The situation changes: usage falls back well below, then climbs again.
        let later = start + Duration::from_secs(3600);
        assert_eq!(t.evaluate(later, at(0.5), None), None);
        let approach = Observation {
            fraction: Some(0.6),
            eta_seconds: Some(20.0),
        };
        assert_eq!(
            t.evaluate(later + Duration::from_secs(60), approach, None),
            Some(Reason::Eta { seconds: 20.0 })
        );
    }

    #[test]
    fn without_a_limit_only_requests_dump() {
        let mut t = triggers();
        let none = Observation::default();
        assert_eq!(t.evaluate(Instant::now(), none, None), None);
        assert_eq!(t.next_threshold(), Some(0.8));
        assert_eq!(
            t.evaluate(Instant::now(), none, Some(Reason::OnDemand)),
            Some(Reason::OnDemand)
        );
    }

    #[test]
    fn slugs_for_file_names() {
        assert_eq!(Reason::Threshold { threshold: 0.95 }.slug(), "threshold-95");
        assert_eq!(Reason::OnDemand.slug(), "on-demand");
        assert_eq!(Reason::Eta { seconds: 3.0 }.kind().name(), "eta");
    }
}
