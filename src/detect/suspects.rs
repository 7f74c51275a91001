//! Leak suspects: the call sites whose live bytes keep rising across profile snapshots taken at
//! intervals, ranked by growth rate; and a baseline, taken after warm-up, for the differential
//! flamegraph of now against it.
//!
//! Memory is bounded: a snapshot keeps at most [`SITES_PER_SNAPSHOT`] sites (by live bytes),
//! at most [`SNAPSHOTS_KEPT`] snapshots are kept, and the baseline keeps at most
//! [`BASELINE_STACKS`] stacks.

use crate::plumbing::Plumbing;
use crate::profile::{Profile, SampleType};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io;

/// Sites kept per snapshot.
pub const SITES_PER_SNAPSHOT: usize = 256;
/// Snapshots kept.
pub const SNAPSHOTS_KEPT: usize = 8;
/// Stacks kept in the baseline.
pub const BASELINE_STACKS: usize = 4096;

/// A call site whose live memory keeps growing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    /// The function (innermost frame outside the allocator and std).
    pub function: String,
    /// Robust growth of its live bytes, bytes per second.
    pub growth_bytes_per_second: f64,
    /// Its live bytes now (estimated).
    pub live_bytes: i64,
    /// Growth since the oldest snapshot kept, bytes.
    pub grown_bytes: i64,
    /// Intervals in which it grew, of those observed.
    pub rose_in: usize,
    /// Intervals observed.
    pub intervals: usize,
    /// The span whose live bytes at this site grew most over the snapshots kept (as
    /// [`span_name`](crate::spans::span_name) writes it), when allocations carry spans
    /// ([`SpanLayer`](crate::spans)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<String>,
}

/// Spans kept per site per snapshot, the largest: enough to find the one that grew.
pub const SPANS_PER_SITE: usize = 8;

#[derive(Debug, Clone)]
struct SiteSnapshot {
    unix_ms: u64,
    live: HashMap<String, i64>,
    /// Per site, its live bytes in each of its largest spans (empty without spans).
    spans: HashMap<String, Vec<(String, i64)>>,
}

/// Snapshots over time and the baseline.
#[derive(Debug, Default, Clone)]
pub struct SuspectTracker {
    snapshots: VecDeque<SiteSnapshot>,
    baseline: Option<(u64, Vec<String>)>,
}

impl SuspectTracker {
    /// Records the live bytes per site of `profile`, taken at `unix_ms`, each site named by
    /// its first frame outside `plumbing`; the first call sets the baseline.
    pub fn observe(&mut self, unix_ms: u64, profile: &Profile, plumbing: &Plumbing) {
        let live: HashMap<String, i64> = profile
            .culprits(SampleType::InuseSpace, plumbing)
            .into_iter()
            .filter(|f| f.flat > 0)
            .take(SITES_PER_SNAPSHOT)
            .map(|f| (f.function, f.flat))
            .collect();
        let spans = crate::spans::culprits_by_span(profile, plumbing)
            .into_iter()
            .filter(|(function, _)| live.contains_key(function))
            .map(|(function, spans)| {
                let mut spans: Vec<(String, i64)> = spans.into_iter().collect();
                spans.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                spans.truncate(SPANS_PER_SITE);
                (function, spans)
            })
            .collect();
        if self.snapshots.len() == SNAPSHOTS_KEPT {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back(SiteSnapshot {
            unix_ms,
            live,
            spans,
        });
        if self.baseline.is_none() {
            self.baseline = Some((unix_ms, baseline_lines(profile)));
        }
    }

    /// Sets the baseline to `profile` now (for example after a deploy or warm-up).
    pub fn rebase(&mut self, unix_ms: u64, profile: &Profile) {
        self.baseline = Some((unix_ms, baseline_lines(profile)));
    }

    /// When the baseline was taken, if it was.
    pub fn baseline_unix_ms(&self) -> Option<u64> {
        self.baseline.as_ref().map(|b| b.0)
    }

    /// Snapshots kept.
    pub fn snapshots(&self) -> usize {
        self.snapshots.len()
    }

    /// The sites whose live bytes rose in at least three quarters of the intervals (and
    /// overall), largest growth rate first. Needs three snapshots.
    pub fn suspects(&self) -> Vec<Suspect> {
        if self.snapshots.len() < 3 {
            return Vec::new();
        }
        let latest = self.snapshots.back().expect("non-empty");
        let mut suspects: Vec<Suspect> = latest
            .live
            .iter()
            .filter_map(|(function, &now)| {
                let series: Vec<(f64, f64)> = self
                    .snapshots
                    .iter()
                    .map(|s| {
                        (
                            s.unix_ms as f64 / 1000.0,
                            s.live.get(function).copied().unwrap_or(0) as f64,
                        )
                    })
                    .collect();
                let intervals = series.len() - 1;
                let rose_in = series.windows(2).filter(|w| w[1].1 > w[0].1).count();
                let grown = now - series[0].1 as i64;
                let slope = crate::statistics::theil_sen_slope(&series)?;
                (grown > 0 && slope > 0.0 && rose_in * 4 >= intervals * 3).then(|| Suspect {
                    function: function.clone(),
                    growth_bytes_per_second: slope,
                    live_bytes: now,
                    grown_bytes: grown,
                    rose_in,
                    intervals,
                    span: self.span_that_grew(function),
                })
            })
            .collect();
        suspects.sort_by(|a, b| {
            b.growth_bytes_per_second
                .total_cmp(&a.growth_bytes_per_second)
                .then_with(|| a.function.cmp(&b.function))
        });
        suspects
    }

    /// The span whose live bytes at `function` grew most from the oldest snapshot kept to the
    /// latest, if any grew.
    fn span_that_grew(&self, function: &str) -> Option<String> {
        let bytes_in = |snapshot: &SiteSnapshot, span: &str| {
            snapshot
                .spans
                .get(function)
                .and_then(|spans| spans.iter().find(|(name, _)| name == span))
                .map_or(0, |(_, bytes)| *bytes)
        };
        let (oldest, latest) = (self.snapshots.front()?, self.snapshots.back()?);
        latest
            .spans
            .get(function)?
            .iter()
            .map(|(span, now)| (span, now.saturating_sub(bytes_in(oldest, span))))
            .filter(|&(_, grown)| grown > 0)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(span, _)| span.clone())
    }

    /// Writes the differential flamegraph of `now` against the baseline: widths are live bytes
    /// now, red frames grew, blue ones shrank.
    pub fn write_diff_flamegraph<W: io::Write>(&self, now: &Profile, writer: W) -> io::Result<()> {
        let before = self.baseline.as_ref().map_or(&[][..], |b| &b.1[..]);
        write_diff(before, now, writer)
    }

    /// The baseline's folded stacks, if it was taken.
    pub fn baseline_lines(&self) -> Option<&[String]> {
        self.baseline.as_ref().map(|b| &b.1[..])
    }
}

/// The differential flamegraph of `now` against folded stacks taken `before`, titled as the
/// baseline's: `encode` draws it.
#[cfg(feature = "flamegraph")]
pub(crate) fn write_diff<W: io::Write>(
    before: &[String],
    now: &Profile,
    writer: W,
) -> io::Result<()> {
    const TITLE: &str = "live heap: now against the baseline";
    let options = crate::encode::DiffFlamegraphOptions {
        title: TITLE.to_owned(),
        subtitle: "red grew since the baseline, blue shrank; widths are live bytes now".to_owned(),
        count_name: "bytes".to_owned(),
        // Nothing sampled is live now: say so instead of failing the page.
        empty_after_note: Some(format!("{TITLE}: no inuse_space samples now")),
    };
    crate::encode::write_diff_flamegraph(
        before.join("\n"),
        crate::encode::folded_text(now, SampleType::InuseSpace),
        &options,
        writer,
    )
}

/// Without the `flamegraph` feature: an SVG that says so.
#[cfg(not(feature = "flamegraph"))]
pub(crate) fn write_diff<W: io::Write>(
    _before: &[String],
    _now: &Profile,
    writer: W,
) -> io::Result<()> {
    crate::encode::write_flamegraph_placeholder(crate::encode::FlamegraphPlaceholder::Page, writer)
}

fn baseline_lines(profile: &Profile) -> Vec<String> {
    let mut lines = crate::encode::folded_lines(profile, SampleType::InuseSpace);
    if lines.len() > BASELINE_STACKS {
        let value = |l: &String| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        lines.sort_by_key(|l| std::cmp::Reverse(value(l)));
        lines.truncate(BASELINE_STACKS);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Line, Location, Sample};

    fn profile(sites: &[(&str, i64)]) -> Profile {
        Profile {
            locations: sites
                .iter()
                .map(|(name, _)| Location {
                    lines: vec![Line {
                        function: (*name).to_owned(),
                        ..Line::default()
                    }],
                    ..Location::default()
                })
                .collect(),
            samples: sites
                .iter()
                .enumerate()
                .map(|(i, (_, bytes))| Sample {
                    locations: vec![i],
                    values: [1, *bytes, 1, *bytes],
                    labels: Vec::new(),
                })
                .collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn growing_sites_are_suspects_and_fluctuating_ones_are_not() {
        let mut tracker = SuspectTracker::default();
        let bursts = [900, 0, 1200, 100, 800, 0];
        for (i, burst) in bursts.iter().enumerate() {
            let i = i as i64;
            tracker.observe(
                i as u64 * 60_000,
                &profile(&[
                    ("leak_fast", 1000 + 500 * i),
                    ("leak_slow", 1000 + 100 * i),
                    ("cache", 5000),
                    ("bursty", *burst + 1),
                ]),
                &Plumbing::default(),
            );
        }
        let suspects = tracker.suspects();
        let names: Vec<&str> = suspects.iter().map(|s| s.function.as_str()).collect();
        assert_eq!(names, ["leak_fast", "leak_slow"]);
        assert!((suspects[0].growth_bytes_per_second - 500.0 / 60.0).abs() < 1e-9);
        assert_eq!(suspects[0].rose_in, 5);
        assert_eq!(tracker.snapshots(), 6);
    }

    #[test]
    fn bounded() {
        let mut tracker = SuspectTracker::default();
        for i in 0..20u64 {
            tracker.observe(
                i * 1000,
                &profile(&[("a", i as i64 + 1)]),
                &Plumbing::default(),
            );
        }
        assert_eq!(tracker.snapshots(), SNAPSHOTS_KEPT);
        assert_eq!(tracker.baseline_unix_ms(), Some(0));
    }

    #[cfg(feature = "flamegraph")]
    #[test]
    fn differential_flamegraph_names_the_grower() {
        let mut tracker = SuspectTracker::default();
        tracker.observe(
            0,
            &profile(&[("grower", 100), ("steady", 100)]),
            &Plumbing::default(),
        );
        let mut svg = Vec::new();
        tracker
            .write_diff_flamegraph(&profile(&[("grower", 900), ("steady", 100)]), &mut svg)
            .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("grower") && svg.contains("steady"));
    }

    #[cfg(not(feature = "flamegraph"))]
    #[test]
    fn differential_flamegraph_without_inferno_is_the_placeholder() {
        let mut svg = Vec::new();
        write_diff(&[], &profile(&[("grower", 900)]), &mut svg).unwrap();
        let mut placeholder = Vec::new();
        crate::encode::write_flamegraph_placeholder(
            crate::encode::FlamegraphPlaceholder::Page,
            &mut placeholder,
        )
        .unwrap();
        assert_eq!(svg, placeholder);
    }

    // The page `/debug/heap/diff.svg` answered 500 whenever no sampled block was live.
    #[cfg(feature = "flamegraph")]
    #[test]
    fn differential_flamegraph_of_an_empty_heap_is_still_an_svg() {
        for before in [&[][..], &["gone 100".to_owned()][..]] {
            let mut svg = Vec::new();
            write_diff(before, &Profile::default(), &mut svg).expect("an SVG, not an error");
            let svg = String::from_utf8(svg).unwrap();
            assert!(
                svg.contains("<svg") && svg.contains("no inuse_space samples"),
                "{svg}"
            );
        }
    }
}
