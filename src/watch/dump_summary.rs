//! The JSON summary of a dump set: why and when it was written, the memory against the limit,
//! the heap counters, the top call sites, and the recent series — what an on-call engineer
//! reads first, and what the next instance reports at start-up.

use super::triggers::Reason;
use crate::detect::{Suspect, Verdict};
use crate::memory::MemoryReading;
use crate::profile::{Profile, SampleType};
use crate::spans::SpanTotal;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

/// Call sites listed in a summary.
pub(crate) const TOP_SITES: usize = 10;
/// How many spans the summary and the report list.
pub(crate) const TOP_SPANS: usize = 10;

/// The `format` field of every summary this version writes.
pub const SUMMARY_FORMAT: &str = "heapwatch-dump/1";

/// The `.json` file of a dump set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DumpSummary {
    /// Always [`SUMMARY_FORMAT`].
    pub format: String,
    /// `threshold`, `eta`, `on_demand`, `signal` or `leak`.
    pub reason: String,
    /// The reason in words.
    pub reason_detail: String,
    /// For `threshold`: the fraction of the limit crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// For `eta`: the predicted seconds to the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// When the dump was taken, RFC 3339 in UTC.
    pub time: String,
    /// The same instant, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The process that wrote it.
    pub pid: u32,
    /// The program's name (`argv[0]`'s file name).
    pub program: String,
    /// The memory limit in bytes, if any.
    pub limit_bytes: Option<u64>,
    /// Where the limit came from: `cgroup v2`, `cgroup v1`, `configured` or `none`.
    pub limit_source: String,
    /// Memory charged to the cgroup (or the process's RSS without one).
    pub usage_bytes: Option<u64>,
    /// The working set (usage − inactive file), the figure the limit is enforced on.
    pub working_set_bytes: Option<u64>,
    /// `working_set_bytes / limit_bytes`.
    pub usage_fraction: Option<f64>,
    /// OOM kills the cgroup had counted when the dump was written.
    pub oom_kills: Option<u64>,
    /// The exact heap counters.
    pub heap: HeapCounters,
    /// heapwatch's own memory (tables, stacks, symbols).
    pub profiler_bytes: u64,
    /// Of that, the symbolizer's: symbol and line tables, names, the cache of named
    /// addresses.
    #[serde(default)]
    pub symbolizer_bytes: u64,
    /// Whether the profile's addresses carry names. `false` for a set written near the limit
    /// before naming (addresses, build ids and the names already cached only): the watch
    /// names it once the pressure has passed, the next instance of the same program at its
    /// start, or `heapwatch symbolize` offline; its `top_sites` then say what could be named.
    #[serde(default = "named_by_default")]
    pub named: bool,
    /// The sampling rate the profile was taken at (mean bytes between samples).
    pub sample_rate_bytes: u64,
    /// Call sites holding the most live memory (innermost frame), largest first.
    pub top_sites: Vec<TopSite>,
    /// Live heap by tracing span, largest first ([`SpanLayer`](crate::spans)); empty when no
    /// sampled allocation carried a span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_spans: Vec<SpanTotal>,
    /// The recent series, oldest first.
    pub series: Vec<SeriesPoint>,
    /// The leak detector's verdict when the dump was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Call sites whose live bytes kept rising, fastest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspects: Vec<Suspect>,
    /// The other files of the set (names within the same directory).
    pub files: DumpFiles,
}

/// The exact heap counters at the time of the dump.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeapCounters {
    /// Live bytes.
    pub live_bytes: u64,
    /// Live blocks.
    pub live_objects: u64,
    /// Bytes allocated since start.
    pub allocated_bytes: u64,
    /// Blocks allocated since start.
    pub allocated_objects: u64,
}

impl From<crate::counters::HeapStats> for HeapCounters {
    fn from(stats: crate::counters::HeapStats) -> Self {
        HeapCounters {
            live_bytes: stats.live_bytes,
            live_objects: stats.live_objects,
            allocated_bytes: stats.allocated_bytes,
            allocated_objects: stats.allocated_objects,
        }
    }
}

/// One call site of the profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TopSite {
    /// The function (innermost frame after the allocator's own).
    pub function: String,
    /// Estimated live bytes allocated directly by it.
    pub inuse_bytes: i64,
    /// Estimated live bytes allocated by it or anything it called.
    pub inuse_bytes_cum: i64,
    /// Share of the profile's live bytes (flat).
    pub share: f64,
}

/// One tick of the series.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct SeriesPoint {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Exact live heap bytes.
    pub heap_live_bytes: u64,
    /// Usage (cgroup, or RSS without one).
    pub usage_bytes: Option<u64>,
    /// Working set.
    pub working_set_bytes: Option<u64>,
    /// The limit.
    pub limit_bytes: Option<u64>,
}

/// File names of a dump set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpFiles {
    /// The pprof heap profile (`.pb.gz`).
    pub profile: String,
    /// The flamegraph of live bytes (`.svg`).
    pub flamegraph: String,
    /// This summary (`.json`).
    pub summary: String,
    /// The differential flamegraph against the baseline (`.diff.svg`), for leak dumps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_flamegraph: Option<String>,
}

/// What a dump knows beside its profile: why, when, the memory, and the detector's state.
pub(crate) struct DumpContext<'a> {
    pub(crate) reason: &'a Reason,
    pub(crate) unix_ms: u64,
    pub(crate) memory: &'a MemoryReading,
    pub(crate) series: Vec<SeriesPoint>,
    pub(crate) verdict: Verdict,
    pub(crate) suspects: Vec<Suspect>,
}

impl DumpSummary {
    /// The summary of a dump of `profile`, the heap counters and heapwatch's own figures read
    /// now; its `files` are filled in by the writer.
    pub(crate) fn assemble(context: DumpContext<'_>, profile: &Profile) -> DumpSummary {
        let top_sites = top_sites(profile, TOP_SITES);
        let top_spans = top_spans(profile, TOP_SPANS);
        Self::assemble_with(context, top_sites, top_spans, true)
    }

    /// The summary of a dump written before naming: its top sites and spans as the raw dump
    /// could tell them.
    pub(crate) fn assemble_unnamed(
        context: DumpContext<'_>,
        top_sites: Vec<TopSite>,
        top_spans: Vec<SpanTotal>,
    ) -> DumpSummary {
        Self::assemble_with(context, top_sites, top_spans, false)
    }

    /// The summary once `profile`, the set's profile, has been named: top sites and spans
    /// read from it again.
    pub(crate) fn named_from(&mut self, profile: &Profile) {
        self.top_sites = top_sites(profile, TOP_SITES);
        self.top_spans = top_spans(profile, TOP_SPANS);
        self.named = true;
    }

    fn assemble_with(
        context: DumpContext<'_>,
        top_sites: Vec<TopSite>,
        top_spans: Vec<SpanTotal>,
        named: bool,
    ) -> DumpSummary {
        let DumpContext {
            reason,
            unix_ms,
            memory,
            series,
            verdict,
            suspects,
        } = context;
        DumpSummary {
            format: SUMMARY_FORMAT.to_owned(),
            reason: reason.kind().name().to_owned(),
            reason_detail: reason.describe(),
            threshold: match reason {
                Reason::Threshold { threshold } => Some(*threshold),
                _ => None,
            },
            eta_seconds: match reason {
                Reason::Eta { seconds } => Some(*seconds),
                _ => None,
            },
            time: humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms))
                .to_string(),
            unix_ms,
            pid: std::process::id(),
            program: program_name(),
            limit_bytes: memory.limit,
            limit_source: memory.limit_source.to_owned(),
            usage_bytes: memory.usage,
            working_set_bytes: memory.working_set,
            usage_fraction: memory.fraction(),
            oom_kills: memory.oom_kills,
            heap: crate::counters::stats().into(),
            profiler_bytes: crate::table::profiler_stats().profiler_bytes,
            symbolizer_bytes: crate::internal_alloc::symbolizer_heap_bytes() as u64,
            named,
            sample_rate_bytes: crate::sampler::sample_rate(),
            top_sites,
            top_spans,
            series,
            verdict: Some(verdict),
            suspects,
            files: DumpFiles::default(),
        }
    }
}

/// Summaries written before this field existed were always named.
fn named_by_default() -> bool {
    true
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The spans holding the most live bytes (none when no sample carries a span).
pub(crate) fn top_spans(profile: &Profile, count: usize) -> Vec<SpanTotal> {
    let mut spans = crate::spans::by_span(profile);
    spans.retain(|span| span.inuse_bytes > 0);
    spans.truncate(count);
    spans
}

/// The top sites of a profile by live bytes.
pub(crate) fn top_sites(profile: &Profile, count: usize) -> Vec<TopSite> {
    let total = profile.total(SampleType::InuseSpace).max(1) as f64;
    profile
        .culprits(SampleType::InuseSpace, &crate::plumbing::plumbing())
        .into_iter()
        .filter(|f| f.flat > 0)
        .take(count)
        .map(|f| TopSite {
            share: f.flat as f64 / total,
            function: f.function,
            inuse_bytes: f.flat,
            inuse_bytes_cum: f.cum,
        })
        .collect()
}
