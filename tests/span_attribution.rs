//! Heap by tracing span, through `heapwatch::SpanLayer` as a service installs it: a sampled
//! allocation carries the span it was made in (name and selected fields) as pprof labels; a
//! nested span inherits the fields it does not record; leaving a span gives the thread back
//! its enclosing span; a field recorded later retags the span; tokio tasks instrumented with a
//! span carry it on whichever worker polls them. Hostile: a flood of distinct field values
//! stays within the bound on tags (the rest share the overflow tag), a long value is cut, and
//! a value with quotes, braces and a newline still makes `/metrics` that `promtool` accepts.
//! `go tool pprof -tags` reads the labels from the written profile.
//!
//! Own binary without libtest's harness: the sampling rate (every byte) and the subscriber are
//! global.
//!
//! Requires Go (`golang-go`) and promtool (`prometheus`); a missing tool fails the test.
//!
//! Frame-pointer pass: not needed — what is checked is the labels of samples, not their stacks.

mod common;

use heapwatch::{Profile, SampleType};
use std::hint::black_box;
use std::path::PathBuf;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// The bound on distinct tags set for this test: the flood must stay within it.
const MAX_TAGS: usize = 32;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// The labels of the sample holding the fewest live bytes among those holding at least
/// `bytes`: the block of that (unique) size the caller keeps (sampled at every byte, its
/// estimate is its size).
fn labels_of_block(profile: &Profile, bytes: i64) -> Labels {
    profile
        .samples
        .iter()
        .filter(|s| s.value(SampleType::InuseSpace) >= bytes)
        .min_by_key(|s| s.value(SampleType::InuseSpace))
        .unwrap_or_else(|| panic!("no sample holds {bytes} bytes"))
        .labels
        .clone()
}

/// Live bytes per value of label `key` (samples without it left out).
fn live_by(profile: &Profile, key: &str) -> std::collections::HashMap<String, i64> {
    let mut by = std::collections::HashMap::new();
    for sample in &profile.samples {
        if let Some((_, value)) = sample.labels.iter().find(|(k, _)| k == key) {
            *by.entry(value.clone()).or_insert(0) += sample.value(SampleType::InuseSpace);
        }
    }
    by
}

fn a_span_and_its_selected_fields() {
    let span = tracing::info_span!("request", route = "/export", tenant = "acme", id = 7);
    let kept = span.in_scope(|| black_box(vec![1u8; 3_000_001]));
    let outside = black_box(vec![1u8; 3_000_002]);
    let profile = heapwatch::snapshot();
    assert_eq!(
        labels_of_block(&profile, 3_000_001),
        labels(&[
            ("span", "request"),
            ("route", "/export"),
            ("tenant", "acme")
        ]),
        "the span's name and the selected fields, in the order selected; `id` not selected"
    );
    assert_eq!(
        labels_of_block(&profile, 3_000_002),
        labels(&[]),
        "outside every span: no labels"
    );
    drop((kept, outside));
}

fn nested_spans_inherit_and_leaving_restores() {
    let request = tracing::info_span!("request", route = "/import", tenant = "globex");
    let (inner, after) = request.in_scope(|| {
        let query = tracing::info_span!("db_query", tenant = "initech");
        let inner = query.in_scope(|| black_box(vec![1u8; 3_100_001]));
        (inner, black_box(vec![1u8; 3_100_002]))
    });
    let profile = heapwatch::snapshot();
    assert_eq!(
        labels_of_block(&profile, 3_100_001),
        labels(&[
            ("span", "db_query"),
            ("route", "/import"),
            ("tenant", "initech")
        ]),
        "the inner span: its own tenant, the request's route"
    );
    assert_eq!(
        labels_of_block(&profile, 3_100_002),
        labels(&[
            ("span", "request"),
            ("route", "/import"),
            ("tenant", "globex")
        ]),
        "back in the request once the inner span is left"
    );
    drop((inner, after));
}

fn a_field_recorded_later_retags_the_span() {
    let span = tracing::info_span!("request", route = tracing::field::Empty);
    let _entered = span.enter();
    let before = black_box(vec![1u8; 3_200_001]);
    span.record("route", "/late");
    let after = black_box(vec![1u8; 3_200_002]);
    let profile = heapwatch::snapshot();
    assert_eq!(
        labels_of_block(&profile, 3_200_001),
        labels(&[("span", "request")])
    );
    assert_eq!(
        labels_of_block(&profile, 3_200_002),
        labels(&[("span", "request"), ("route", "/late")])
    );
    drop((before, after));
}

/// Eight tasks on a two-worker runtime, each under a `job` span of one of two tenants, each
/// yielding between allocations so the workers interleave them.
fn tokio_tasks_carry_their_span_on_every_worker() {
    const CHUNK: usize = 1 << 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kept: Vec<Vec<Vec<u8>>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let tenant = if i % 2 == 0 { "even" } else { "odd" };
                let chunks = if i % 2 == 0 { 3 } else { 1 };
                let span = tracing::info_span!("job", tenant);
                tokio::spawn(
                    async move {
                        let mut kept = Vec::new();
                        for _ in 0..chunks {
                            tokio::task::yield_now().await;
                            kept.push(black_box(vec![1u8; CHUNK]));
                        }
                        kept
                    }
                    .instrument(span),
                )
            })
            .collect();
        let mut kept = Vec::new();
        for task in tasks {
            kept.push(task.await.expect("task"));
        }
        kept
    });
    let by_tenant = live_by(&heapwatch::snapshot(), "tenant");
    let (even, odd) = (by_tenant["even"], by_tenant["odd"]);
    let mib = |bytes: i64| bytes as f64 / CHUNK as f64;
    assert!(
        (12.0..13.0).contains(&mib(even)) && (4.0..5.0).contains(&mib(odd)),
        "live MiB by tenant: even {} (12 kept), odd {} (4 kept)",
        mib(even),
        mib(odd)
    );
    drop(kept);
    drop(runtime);
}

fn a_flood_of_values_stays_within_the_bound() {
    let mut kept = Vec::new();
    for i in 0..500 {
        let route = format!("/flood/{i}");
        let span = tracing::info_span!("flood", route = route.as_str());
        kept.push(span.in_scope(|| black_box(vec![1u8; 4096])));
    }
    let long = "x".repeat(10_000);
    let span = tracing::info_span!("long", route = long.as_str());
    let long_kept = span.in_scope(|| black_box(vec![1u8; 3_300_001]));

    let profile = heapwatch::snapshot();
    let spans: std::collections::HashSet<&Labels> =
        profile.samples.iter().map(|s| &s.labels).collect();
    assert!(
        spans.len() <= MAX_TAGS + 2,
        "{} distinct label sets, bound {MAX_TAGS} (+ none + overflow)",
        spans.len()
    );
    let overflowed = profile.samples.iter().any(|s| {
        s.labels == labels(&[("span", heapwatch::spans::OVERFLOW_NAME)])
            && s.value(SampleType::InuseSpace) > 0
    });
    assert!(
        overflowed,
        "the flood past the bound shares the overflow tag"
    );
    assert_eq!(
        labels_of_block(&profile, 3_300_001),
        labels(&[("span", heapwatch::spans::OVERFLOW_NAME)]),
        "a span created past the bound is the overflow tag"
    );
    for (key, value) in profile.samples.iter().flat_map(|s| &s.labels) {
        assert!(
            value.len() <= heapwatch::spans::MAX_VALUE_BYTES,
            "{key}: a value of {} bytes",
            value.len()
        );
    }
    drop((kept, long_kept));
}

/// Run first, while tags are still free: a hostile value must make `/metrics` that promtool
/// accepts, and the span must be among its series.
fn a_hostile_value_in_metrics() {
    common::require_tool("promtool", "prometheus");
    let span = tracing::info_span!("evil", route = "a\"b\\c\n}{d");
    let kept = span.in_scope(|| black_box(vec![1u8; 16 << 20]));
    let text = heapwatch::http::render_metrics();
    let series: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("heapwatch_heap_span_live_bytes{"))
        .collect();
    assert!(
        series.iter().any(|line| line.contains("evil{route=")),
        "no series for the span: {series:?}"
    );
    assert!(series.len() <= heapwatch::metrics_export::TOP_SPAN_SERIES);
    let scratch = scratch();
    let file = scratch.join("metrics.txt");
    std::fs::write(&file, &text).expect("write metrics");
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool rejects /metrics: {}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    drop(kept);
}

fn go_pprof_reads_the_labels() {
    common::require_tool("go", "golang-go");
    let span = tracing::info_span!("request", route = "/pprof", tenant = "umbrella");
    let kept = span.in_scope(|| black_box(vec![1u8; 8 << 20]));
    let scratch = scratch();
    let file = scratch.join("heap.pb.gz");
    let out = std::fs::File::create(&file).expect("create the profile");
    heapwatch::encode::write_pprof(&heapwatch::snapshot(), out).expect("write the profile");
    let tags = common::go_pprof(
        &["-tags", "-sample_index=inuse_space"],
        file.to_str().unwrap(),
        &scratch,
    );
    println!("go tool pprof -tags:\n{tags}");
    for expected in [
        "route: Total",
        "/pprof",
        "tenant: Total",
        "umbrella",
        "span: Total",
    ] {
        assert!(tags.contains(expected), "no {expected:?} in -tags output");
    }
    let focused = common::go_pprof(
        &[
            "-top",
            "-sample_index=inuse_space",
            "-tagfocus=tenant=umbrella",
        ],
        file.to_str().unwrap(),
        &scratch,
    );
    let total = focused
        .lines()
        .find(|line| line.starts_with("Showing nodes accounting for"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        total.contains("accounting for 8MB"),
        "-tagfocus=tenant=umbrella keeps the 8 MiB block alone: {total}\n{focused}"
    );
    drop(kept);
}

fn scratch() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("heapwatch-span-attribution-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn main() {
    tracing_subscriber::registry()
        .with(
            heapwatch::SpanLayer::new()
                .with_fields(["route", "tenant"])
                .max_tags(MAX_TAGS),
        )
        .init();
    heapwatch::set_sample_rate(1);
    let checks: [(&str, fn()); 7] = [
        ("a hostile value in /metrics", a_hostile_value_in_metrics),
        (
            "a span and its selected fields",
            a_span_and_its_selected_fields,
        ),
        (
            "nested spans inherit, leaving restores",
            nested_spans_inherit_and_leaving_restores,
        ),
        (
            "a field recorded later retags",
            a_field_recorded_later_retags_the_span,
        ),
        (
            "tokio tasks carry their span",
            tokio_tasks_carry_their_span_on_every_worker,
        ),
        ("go tool pprof reads the labels", go_pprof_reads_the_labels),
        (
            "a flood of values stays bounded",
            a_flood_of_values_stays_within_the_bound,
        ),
    ];
    for (name, check) in checks {
        check();
        println!("ok: {name}");
    }
    let _ = std::fs::remove_dir_all(scratch());
}
