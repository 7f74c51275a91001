//! What `heapwatch::SpanLayer` costs, side by side in one run against the same subscriber
//! without it (`tracing_subscriber`'s registry alone): per span entered and left, per span
//! created, entered, left and closed, and on a span-heavy request workload (a request span with
//! its route, two nested spans, a JSON body parsed and a response rendered) with heapwatch
//! over jemalloc as the global allocator at its default sampling rate.
//!
//! ```text
//! cargo bench --bench span_layer
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use std::hint::black_box;
use tracing::Dispatch;
use tracing_subscriber::prelude::*;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

const ROUTES: [&str; 8] = [
    "/orders/{id}",
    "/orders",
    "/report",
    "/health",
    "/users/{id}",
    "/users",
    "/export",
    "/import",
];

/// The two subscribers compared: the registry alone, and the registry with heapwatch's layer.
fn subscribers() -> [(&'static str, Dispatch); 2] {
    [
        ("registry", Dispatch::new(tracing_subscriber::registry())),
        (
            "registry+SpanLayer",
            Dispatch::new(
                tracing_subscriber::registry()
                    .with(heapwatch::SpanLayer::new().with_fields(["route", "tenant"])),
            ),
        ),
    ]
}

fn side_by_side(
    c: &mut Criterion,
    group: &str,
    run: impl Fn(&mut BenchmarkGroup<'_, criterion::measurement::WallTime>, &str),
) {
    let mut group = c.benchmark_group(group);
    for (name, dispatch) in subscribers() {
        tracing::dispatcher::with_default(&dispatch, || run(&mut group, name));
    }
    group.finish();
}

fn enter_exit(c: &mut Criterion) {
    side_by_side(c, "span_enter_exit", |group, name| {
        let span = tracing::info_span!("request", route = "/export", tenant = "acme");
        group.bench_function(name, |b| {
            b.iter(|| {
                let _entered = black_box(&span).enter();
            })
        });
    });
}

fn lifecycle(c: &mut Criterion) {
    side_by_side(c, "span_new_enter_exit_close", |group, name| {
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let route = ROUTES[i % ROUTES.len()];
                tracing::info_span!("request", route, tenant = "acme").in_scope(|| black_box(i))
            })
        });
    });
}

/// One request: a request span with its route, a `parse` span around the body's parse and a
/// `render` span around the response, each entered and left once.
fn handle(i: usize, body: &str) -> usize {
    let route = ROUTES[i % ROUTES.len()];
    let request = tracing::info_span!("request", route, tenant = "acme");
    let _request = request.enter();
    let value: serde_json::Value =
        tracing::info_span!("parse").in_scope(|| serde_json::from_str(body).expect("a JSON body"));
    let items = value["items"].as_array().map_or(0, Vec::len);
    let response = tracing::info_span!("render").in_scope(|| {
        let lines: Vec<String> = (0..items)
            .map(|item| format!("{route} item {item}: {}", value["items"][item]["name"]))
            .collect();
        lines.join("\n")
    });
    black_box(response).len()
}

fn requests(c: &mut Criterion) {
    let items: Vec<String> = (0..16)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "name": "item-{i}", "price": {}.5, "tags": ["a", "b"]}}"#,
                i * 3
            )
        })
        .collect();
    let body = format!(r#"{{"order": 42, "items": [{}]}}"#, items.join(", "));
    side_by_side(c, "span_heavy_request", |group, name| {
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                handle(i, &body)
            })
        });
    });
}

criterion_group!(benches, enter_exit, lifecycle, requests);
criterion_main!(benches);
