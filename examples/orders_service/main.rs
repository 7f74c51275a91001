//! A realistic axum + tokio service, built the way services ship (release, line tables, no
//! hints to the compiler), with heapwatch as its global allocator, its watch running and its
//! pages nested under `/heapwatch` of the service's own router.
//!
//! Three kinds of route:
//! - `GET /orders/{id}` leaks: it remembers 64 KiB of session data per request in
//!   `handlers::retain_session_blob`, a small helper that the compiler inlines into each async
//!   handler, which it inlines in turn into axum's generic `Handler::call` closure;
//! - `GET /orders/bulk/{count}`, a bulk import, leaks through the same helper `count` times
//!   over (at most 1024: 64 MiB a request); `tests/fast_leak.rs` drives it into cgroup limits;
//! - `GET /report` allocates an 8 MiB report, sends it and drops it (a burst, not a leak);
//! - `GET /health` allocates next to nothing.
//!
//! Each request runs in a `request` span whose `route` field is the matched route, as a
//! service's tracing middleware records it; [`heapwatch::SpanLayer`] selects that field, so
//! every profile, report, dump and metric says which route holds the memory:
//! `go tool pprof -tags http://127.0.0.1:8087/heapwatch/debug/pprof/heap`.
//!
//! ```text
//! cargo run --release --features axum --example orders_service -- --addr 127.0.0.1:8087
//! go tool pprof -top http://127.0.0.1:8087/heapwatch/debug/pprof/heap
//! ```
//!
//! Flags: `--addr ADDR` (default `127.0.0.1:0`, any free port; the address is printed as
//! `listening on http://…`), `--dir DIR` (the watch's dump directory, default
//! `./heapwatch-dumps`), `--seconds N` (stop after N seconds).

mod handlers;
mod report;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

struct Options {
    addr: String,
    dir: String,
    seconds: Option<f64>,
}

fn options() -> Options {
    let mut options = Options {
        addr: "127.0.0.1:0".into(),
        dir: "heapwatch-dumps".into(),
        seconds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => options.addr = value,
            "--dir" => options.dir = value,
            "--seconds" => options.seconds = Some(value.parse().expect("--seconds needs a number")),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// `ORDERS_DETECTOR_WINDOW` (for example `30s`; tests and demos) compresses the leak
/// detector's time: its window, and with it the floor window, the confirmation, the suspect
/// interval, the warm-up and the tick, in the proportions of `examples/mixed_service.rs`.
/// Unset, the defaults stand (a 10-minute window).
fn compress_time(builder: heapwatch::watch::WatchBuilder) -> heapwatch::watch::WatchBuilder {
    let Some(window) = std::env::var("ORDERS_DETECTOR_WINDOW")
        .ok()
        .and_then(|v| heapwatch::watch::parse_duration(&v))
    else {
        return builder;
    };
    builder
        .tick(window / 600)
        .detector(heapwatch::detect::DetectorConfig {
            window,
            floor_window: window * 2 / 15,
            confirm: window / 30,
            ..heapwatch::detect::DetectorConfig::default()
        })
        .suspect_interval(window / 15)
        .warmup(window / 15)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(false),
        )
        .with(heapwatch::SpanLayer::new().with_fields(["route"]))
        .init();
    let options = options();
    let _watch = compress_time(heapwatch::watch::Watch::builder().dir(&options.dir))
        .start()
        .expect("start the heapwatch watch");

    let app = Router::new()
        .route("/orders/{id}", get(handlers::get_order))
        .route("/orders/bulk/{count}", get(handlers::get_orders_bulk))
        .route("/report", get(handlers::get_report))
        .route("/health", get(handlers::health))
        .route_layer(axum::middleware::from_fn(in_request_span))
        .with_state(Arc::new(handlers::AppState::default()))
        .nest_service("/heapwatch", heapwatch::http::router());

    let listener = tokio::net::TcpListener::bind(&options.addr)
        .await
        .expect("bind the service address");
    println!(
        "listening on http://{}",
        listener.local_addr().expect("local address")
    );
    let _ = std::io::stdout().flush();
    let serve = axum::serve(listener, app);
    match options.seconds {
        Some(seconds) => {
            let _ = tokio::time::timeout(Duration::from_secs_f64(seconds), serve).await;
        }
        None => serve.await.expect("serve"),
    }
}

/// Runs the request in a `request` span naming its method and matched route, as a tracing
/// middleware does.
async fn in_request_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!("request", method = %request.method(), route = %route);
    next.run(request).instrument(span).await
}
