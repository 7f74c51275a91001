//! The pages that read the sample table — `?debug=1`, pprof, the flamegraphs, the report —
//! rendered within the response budget ([`super::budget`]). Each reserves, before it copies
//! the table, what the copy and its names will cost (known from the table's size), renders
//! into a body whose every growth is reserved too, and answers 503 with `Retry-After` when a
//! reservation is refused. The copy merges the stacks that differ only by span
//! ([`PageSnapshot`]), so none of them grows with spans × call paths: the legacy text and the
//! stack flamegraph read the merged profile, pprof streams one sample per (stack, span), and
//! the span flamegraph draws only what can be seen.

use super::budget::{BoundedBody, Reservation};
use super::response::{HeldBudget, Response};
use crate::encode::{SplitSample, WeightedStack};
use crate::profile::{Profile, SampleType};
use crate::snapshot::PageSnapshot;
use std::io;

/// Bytes reserved per stack of the table before copying it: its [`SpanStack`]
/// (`crate::table::SpanStack`, 48 B) and its slot in the merging index (~16 B).
const BYTES_PER_STACK: usize = 64;
/// Bytes per distinct call path kept: its raw stack (40 B) and its merged sample (~120 B).
const BYTES_PER_DISTINCT_STACK: usize = 160;
/// Bytes per return address of the distinct call paths: 8 in the copy, 8 in the merged
/// sample's locations, 8 in the sorted copy that counts the distinct addresses.
const BYTES_PER_DISTINCT_FRAME: usize = 24;
/// Bytes per distinct return address named: its location and lines (Rust's qualified names
/// and paths run to a few hundred bytes, inlined frames add lines) and its index entry.
const BYTES_PER_NAMED_ADDRESS: usize = 768;
/// What a page renders beside its snapshot and body: gzip's state (~300 KiB at the fastest
/// level), the span labels, a JSON value of the report.
const RENDER_BYTES: usize = 1 << 20;

/// The largest body of `?debug=1`: its text lists each distinct call path once.
pub(crate) const LEGACY_TEXT_MAX_BYTES: usize = 16 << 20;
/// The largest gzipped pprof body.
pub(crate) const PPROF_MAX_BYTES: usize = 16 << 20;
/// The largest flamegraph SVG: frames narrower than 0.1 % of the total are not drawn.
pub(crate) const FLAMEGRAPH_MAX_BYTES: usize = 8 << 20;
/// The largest report (JSON: counters and the top sites and spans).
pub(crate) const REPORT_MAX_BYTES: usize = 1 << 20;
/// The narrowest frame the live flamegraphs draw, in percent of the total: inferno's default,
/// so the pages draw what they drew; at most ~1,000 stacks besides the outermost frames.
const PAGE_MIN_WIDTH_PERCENT: f64 = 0.1;
/// What inferno holds per byte of the folded lines it draws (the lines, its frames, the SVG
/// text it writes): measured at under 3 over heapwatch's own pages.
const INFERNO_BYTES_PER_FOLDED_BYTE: usize = 4;

/// A page snapshot and its reservation, or the 503 to answer.
pub(crate) fn admitted_snapshot() -> Result<(PageSnapshot, Reservation), Response> {
    let (stacks, _) = crate::table::raw_size();
    let mut reservation = Reservation::take(
        stacks
            .saturating_mul(BYTES_PER_STACK)
            .saturating_add(RENDER_BYTES),
    )
    .ok_or_else(Response::over_budget)?;
    // Both admissions grow the one reservation, one after the other.
    let snapshot = {
        let reservation = std::cell::RefCell::new(&mut reservation);
        crate::snapshot::page_snapshot(
            |distinct_stacks, distinct_frames| {
                reservation.borrow_mut().grow(
                    distinct_stacks
                        .saturating_mul(BYTES_PER_DISTINCT_STACK)
                        .saturating_add(distinct_frames.saturating_mul(BYTES_PER_DISTINCT_FRAME)),
                )
            },
            |distinct_addresses| {
                reservation
                    .borrow_mut()
                    .grow(distinct_addresses.saturating_mul(BYTES_PER_NAMED_ADDRESS))
            },
        )
    }
    .ok_or_else(Response::over_budget)?;
    Ok((snapshot, reservation))
}

/// Renders a body of at most `max_bytes` under `reservation`: 503 past the budget, 500 on any
/// other failure.
fn render(
    reservation: &mut Reservation,
    max_bytes: usize,
    write: impl FnOnce(&mut BoundedBody<'_>) -> io::Result<()>,
) -> Result<Vec<u8>, Response> {
    let mut body = BoundedBody::new(reservation, max_bytes);
    match write(&mut body) {
        Ok(()) => Ok(body.into_inner()),
        Err(_) if body.over_budget() => Err(Response::over_budget()),
        Err(_) => Err(Response::error(500)),
    }
}

/// The rendered body answered by `answer`, holding its share of the budget until it is sent;
/// or the refusal.
fn finish(
    rendered: Result<Vec<u8>, Response>,
    reservation: Reservation,
    answer: impl FnOnce(Vec<u8>) -> Response,
) -> Response {
    match rendered {
        Ok(body) => hold(answer(body), reservation),
        Err(refused) => refused,
    }
}

/// `response`, keeping of `reservation` what its body takes until the body is sent.
fn hold(mut response: Response, mut reservation: Reservation) -> Response {
    reservation.shrink_to(response.body.capacity());
    response.held = HeldBudget::new(reservation);
    response
}

/// `/debug/pprof/heap?debug=1`: Go's legacy text of the merged profile (the format has no
/// labels, so stacks that differ only by span are one line, as they would be in Go's).
pub(crate) fn legacy_text() -> Response {
    let (mut page, mut reservation) = match admitted_snapshot() {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    // `go tool pprof`, fetching over HTTP, names each listed object from its file, and asks
    // `/debug/pprof/symbol` (Go's symbolz, a POST heapwatch does not serve) for any it cannot
    // name so (a stripped system library), failing when refused. Objects other than the
    // executable are therefore listed as `[libc.so.6]`, a name pprof knows not to symbolize
    // (as `[vdso]`): their frames read as the object's name.
    let executable = std::env::current_exe().ok();
    for mapping in &mut page.profile.mappings {
        let path = std::path::Path::new(&mapping.path);
        if executable.as_deref() != Some(path) {
            let name = path.file_name().map_or_else(
                || mapping.path.clone(),
                |name| name.to_string_lossy().into_owned(),
            );
            mapping.path = format!("[{name}]");
        }
    }
    let rendered = render(&mut reservation, LEGACY_TEXT_MAX_BYTES, |body| {
        crate::encode::write_legacy_heap(&page.profile, body)
    });
    drop(page);
    finish(rendered, reservation, |body| {
        Response::new(200, "text/plain; charset=utf-8", body)
    })
}

/// `/debug/pprof/heap` and `/debug/pprof/allocs`: gzipped pprof, one sample per stack and span
/// streamed into the compressor.
pub(crate) fn pprof(default: SampleType, name: &str) -> Response {
    let (mut page, mut reservation) = match admitted_snapshot() {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    page.profile.default_sample_type = Some(default);
    let PageSnapshot {
        profile, by_span, ..
    } = &page;
    let samples = by_span.iter().map(|split| SplitSample {
        stack: split.stack as usize,
        span: split.span,
        values: [
            split.totals.alloc_objects.round() as i64,
            split.totals.alloc_bytes.round() as i64,
            split.totals.inuse_objects.round() as i64,
            split.totals.inuse_bytes.round() as i64,
        ],
    });
    let rendered = render(&mut reservation, PPROF_MAX_BYTES, |body| {
        crate::encode::write_pprof_split(profile, samples, crate::spans::tags::labels, body)
    });
    drop(page);
    finish(rendered, reservation, |body| {
        let mut response = Response::new(200, "application/octet-stream", body);
        response.disposition = Some(format!("attachment; filename=\"{name}.pb.gz\""));
        response
    })
}

/// `/debug/heap/flamegraph.svg`, by call path or (`by_span`) rooted at each span.
pub(crate) fn flamegraph(by_span: bool) -> Response {
    let (page, mut reservation) = match admitted_snapshot() {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let mut root_names = Vec::new();
    let visible = if by_span {
        // Each tag's root, by its span's name (two tags of one name share a root).
        let mut root_of_tag = std::collections::HashMap::new();
        let mut root_of_name = std::collections::HashMap::new();
        for split in page.by_span.iter() {
            root_of_tag.entry(split.span).or_insert_with(|| {
                let labels = crate::spans::tags::labels(split.span);
                let name = match crate::spans::span_name(&labels) {
                    Some(span) => format!("span: {span}"),
                    None => crate::spans::NO_SPAN_NAME.to_owned(),
                };
                *root_of_name.entry(name).or_insert_with_key(|name| {
                    root_names.push(name.clone());
                    root_names.len() - 1
                })
            });
        }
        // Grouped by root, so that one root's tree is held at a time: 4 B per stack of the
        // table, within the reservation's per-stack bytes.
        let mut order: Vec<u32> = (0..page.by_span.len() as u32).collect();
        order.sort_unstable_by_key(|&i| root_of_tag.get(&page.by_span[i as usize].span));
        let weighted = order.iter().map(|&i| {
            let split = &page.by_span[i as usize];
            WeightedStack {
                stack: split.stack as usize,
                root: root_of_tag.get(&split.span).copied(),
                value: split.totals.inuse_bytes.round() as i64,
            }
        });
        crate::encode::visible_part(
            &page.profile,
            weighted,
            &root_names,
            SampleType::InuseSpace,
            PAGE_MIN_WIDTH_PERCENT,
            |bytes| reservation.grow(bytes),
        )
    } else {
        let weighted = page
            .profile
            .samples
            .iter()
            .enumerate()
            .map(|(stack, sample)| WeightedStack {
                stack,
                root: None,
                value: sample.value(SampleType::InuseSpace),
            });
        crate::encode::visible_part(
            &page.profile,
            weighted,
            &[],
            SampleType::InuseSpace,
            PAGE_MIN_WIDTH_PERCENT,
            |bytes| reservation.grow(bytes),
        )
    };
    let Some(visible) = visible else {
        return Response::over_budget();
    };
    drop(page);
    if !reservation.grow(folded_bytes(&visible).saturating_mul(INFERNO_BYTES_PER_FOLDED_BYTE)) {
        return Response::over_budget();
    }
    let rendered = render(&mut reservation, FLAMEGRAPH_MAX_BYTES, |body| {
        draw_flamegraph(&visible, body)
    });
    drop(visible);
    finish(rendered, reservation, |body| {
        Response::new(200, "image/svg+xml", body)
    })
}

/// The length of `profile`'s folded lines, from its names, without writing them.
fn folded_bytes(profile: &Profile) -> usize {
    let frame_bytes: Vec<usize> = profile
        .locations
        .iter()
        .map(|location| {
            location
                .lines
                .iter()
                .map(|line| line.function.len() + 1)
                .sum::<usize>()
                .max(20)
        })
        .collect();
    profile
        .samples
        .iter()
        .map(|sample| {
            24 + sample
                .locations
                .iter()
                .map(|&l| frame_bytes.get(l).copied().unwrap_or(20))
                .sum::<usize>()
        })
        .sum()
}

fn draw_flamegraph(profile: &Profile, out: &mut BoundedBody<'_>) -> io::Result<()> {
    #[cfg(feature = "flamegraph")]
    {
        crate::encode::write_flamegraph(profile, SampleType::InuseSpace, "live heap", out)
    }
    #[cfg(not(feature = "flamegraph"))]
    {
        let _ = profile;
        crate::encode::write_flamegraph_placeholder(crate::encode::FlamegraphPlaceholder::Page, out)
    }
}

/// `/debug/heap/diff.svg`: the merged profile now against the baseline's folded lines.
pub(crate) fn diff_flamegraph() -> Response {
    let (page, mut reservation) = match admitted_snapshot() {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let baseline = crate::published::baseline().unwrap_or_default();
    let lines_bytes = baseline.iter().map(String::len).sum::<usize>() + folded_bytes(&page.profile);
    if !reservation.grow(lines_bytes.saturating_mul(2 * INFERNO_BYTES_PER_FOLDED_BYTE)) {
        return Response::over_budget();
    }
    let rendered = render(&mut reservation, FLAMEGRAPH_MAX_BYTES, |body| {
        crate::detect::write_diff(&baseline, &page.profile, body)
    });
    drop((page, baseline));
    finish(rendered, reservation, |body| {
        Response::new(200, "image/svg+xml", body)
    })
}

/// How many of the heaviest live sites the report lists.
const TOP_SITES: usize = 10;

/// `/debug/heap/report`: counters, cgroup, verdict, suspects, and the top sites (from the
/// merged profile) and spans (from the split, one row per span).
pub(crate) fn report() -> Response {
    let (page, mut reservation) = match admitted_snapshot() {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let stats = crate::counters::stats();
    let profiler = crate::table::profiler_stats();
    let latest = crate::published::latest();
    let reading = latest.as_ref().map(|l| &l.reading);
    let detector = latest.as_ref().map(|l| &l.detector);
    let top_sites = crate::watch::top_sites(&page.profile, TOP_SITES);
    let top_spans = crate::watch::top_spans(&span_totals(&page), crate::watch::TOP_SPANS);
    drop(page);
    let value = serde_json::json!({
        "heap": crate::watch::HeapCounters::from(stats),
        "sample_rate_bytes": crate::sampler::sample_rate(),
        "profiler_bytes": profiler.profiler_bytes,
        "symbolizer_bytes": profiler.symbol_cache_bytes,
        "top_sites": top_sites,
        "top_spans": top_spans,
        "cgroup": reading.map(|r| serde_json::json!({
            "limit_bytes": r.limit_bytes,
            "usage_bytes": r.usage_bytes,
            "working_set_bytes": r.working_set_bytes,
            "slope_bytes_per_second": r.slope_bytes_per_second,
            "eta_seconds": r.eta_seconds,
        })),
        "verdict": detector.map(|d| &d.verdict),
        "suspects": detector.map(|d| &d.suspects),
        "dumps_written": crate::published::dumps_written().iter().map(|(k, v)| (k.name(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "dump_errors": crate::published::dump_errors(),
    });
    let rendered = render(&mut reservation, REPORT_MAX_BYTES, |body| {
        serde_json::to_writer_pretty(body, &value).map_err(io::Error::other)
    });
    drop(value);
    finish(rendered, reservation, |body| {
        Response::new(200, "application/json", body)
    })
}

/// One sample per span tag, its figures summed over the stacks: what the span table reads.
fn span_totals(page: &PageSnapshot) -> Profile {
    let mut index_of_tag = std::collections::HashMap::new();
    let mut totals = Profile::default();
    for split in page.by_span.iter() {
        let index = *index_of_tag.entry(split.span).or_insert_with(|| {
            totals.samples.push(crate::profile::Sample {
                labels: crate::spans::tags::labels(split.span),
                ..crate::profile::Sample::default()
            });
            totals.samples.len() - 1
        });
        let values = &mut totals.samples[index].values;
        let figures = [
            split.totals.alloc_objects,
            split.totals.alloc_bytes,
            split.totals.inuse_objects,
            split.totals.inuse_bytes,
        ];
        for (value, figure) in values.iter_mut().zip(figures) {
            *value = value.saturating_add(figure.round() as i64);
        }
    }
    totals
}

/// `/debug/pprof/heap?seconds=N`: what was allocated since `earlier` (taken N seconds ago),
/// the in-use figures as of now, as gzipped pprof streamed like [`pprof`]'s. The table's
/// stacks are only ever added, so entry `i` of both copies is the same stack under the same
/// span; the overflow stack, last in each, is matched with the other's.
pub(crate) fn heap_delta(earlier: (PageSnapshot, Reservation), name: &str) -> Response {
    let (earlier, _earlier_reservation) = earlier;
    let (mut later, mut reservation) = match admitted_snapshot() {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    later.profile.default_sample_type = Some(SampleType::AllocSpace);
    let plain = |page: &PageSnapshot| page.by_span.len() - usize::from(page.overflowed);
    let (earlier_plain, later_plain) = (plain(&earlier), plain(&later));
    let before = |index: usize| {
        let matched = if index < later_plain {
            (index < earlier_plain).then(|| &earlier.by_span[index])
        } else {
            earlier.overflowed.then(|| &earlier.by_span[earlier_plain])
        };
        matched.map_or((0.0, 0.0), |split| {
            (split.totals.alloc_objects, split.totals.alloc_bytes)
        })
    };
    let samples = later
        .by_span
        .iter()
        .enumerate()
        .map(|(index, split)| {
            let (objects, bytes) = before(index);
            SplitSample {
                stack: split.stack as usize,
                span: split.span,
                values: [
                    (split.totals.alloc_objects - objects).round().max(0.0) as i64,
                    (split.totals.alloc_bytes - bytes).round().max(0.0) as i64,
                    split.totals.inuse_objects.round() as i64,
                    split.totals.inuse_bytes.round() as i64,
                ],
            }
        })
        .filter(|sample| sample.values.iter().any(|&v| v != 0));
    let rendered = render(&mut reservation, PPROF_MAX_BYTES, |body| {
        crate::encode::write_pprof_split(&later.profile, samples, crate::spans::tags::labels, body)
    });
    drop((earlier, later));
    finish(rendered, reservation, |body| {
        let mut response = Response::new(200, "application/octet-stream", body);
        response.disposition = Some(format!("attachment; filename=\"{name}.pb.gz\""));
        response
    })
}

/// What a light page reserves (`/metrics`, the index, the dump listing, a refusal): their
/// text is a few KiB, bounded by the number of metrics and dump files, not by the heap.
pub(crate) const LIGHT_PAGE_BYTES: usize = 256 << 10;

/// Runs a light page under a reservation of [`LIGHT_PAGE_BYTES`]; 503 if it cannot be had.
pub(crate) fn light(page: impl FnOnce() -> Response) -> Response {
    match Reservation::take(LIGHT_PAGE_BYTES) {
        Some(reservation) => hold(page(), reservation),
        None => Response::over_budget(),
    }
}

/// Runs a dump download under a reservation of the file's size; 503 if it cannot be had.
pub(crate) fn download(size_bytes: u64, page: impl FnOnce() -> Response) -> Response {
    let bytes = usize::try_from(size_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 10);
    match Reservation::take(bytes) {
        Some(reservation) => hold(page(), reservation),
        None => Response::over_budget(),
    }
}
