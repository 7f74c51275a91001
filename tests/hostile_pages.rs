//! Every page of the built-in listener against a heap built to make pages heavy: about 72,000
//! live samples (1,024 span tags × a 70-deep recursion that keeps a block at each level, every
//! allocation sampled). Four concurrent requests of each page must raise the process's peak
//! resident size (`VmHWM`, reset through `/proc/self/clear_refs` before each page) by at most
//! 64 MiB in total; a page that cannot fit the response budget answers 503 with `Retry-After`,
//! and a tiny budget proves that it does, without the peak rising past it.
//!
//! The pages must still say everything: `go tool pprof` reads the same live total from the
//! legacy text and from the protobuf page, the protobuf page carries every tenant's label,
//! and both flamegraphs draw that same total. Requires Go (`golang-go`); without it that
//! scenario fails, saying so.
//!
//! The scenarios run one after another in one process (`harness = false`): the sampling rate
//! and the budget are process-wide. `cargo test --release --test hostile_pages -- NAME` runs
//! the scenarios whose name contains NAME. Linux only (`/proc/self/status`); where
//! `clear_refs` cannot be written the measurement scenario says so and fails.
//!
//! Frame-pointer pass: not needed — what is measured is the pages' memory, not which frames the stacks hold.

mod common;
#[cfg(feature = "axum")]
#[path = "common/served_axum.rs"]
mod served_axum;

use heapwatch::http::Server;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tracing_subscriber::prelude::*;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Distinct span tags: heapwatch's default bound.
const TENANTS: usize = 1024;
/// Levels of the recursion, each keeping one block: a distinct stack per level.
const DEPTH: usize = 70;
/// What four concurrent requests of one page may add to the peak resident size.
const MAX_RISE_BYTES: u64 = 64 << 20;

/// The pages measured, as a client requests them.
const PAGES: [&str; 9] = [
    "/debug/pprof/heap?debug=1",
    "/debug/pprof/heap",
    "/debug/pprof/allocs",
    "/debug/heap/flamegraph.svg",
    "/debug/heap/flamegraph.svg?by=span",
    "/debug/heap/diff.svg",
    "/debug/heap/report",
    "/metrics",
    "/debug/heap/dumps",
];

/// A scenario's name and what it runs against the listener's address.
type Scenario = (&'static str, fn(&str));

fn main() {
    tracing_subscriber::registry()
        .with(heapwatch::SpanLayer::new().with_fields(["tenant"]))
        .init();
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let kept = build_heap();
    let own = heapwatch::profiler_stats();
    println!(
        "hostile_pages: {} live samples in {} stacks",
        own.live_samples, own.stacks
    );
    let dumps =
        std::env::temp_dir().join(format!("heapwatch-hostile-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dumps).expect("scratch directory");
    let server = Server::builder()
        .addr("127.0.0.1:0")
        .dump_dir(&dumps)
        .start()
        .expect("start the listener");
    let addr = server.local_addr().to_string();
    let scenarios: [Scenario; 4] = [
        (
            "the_pages_still_say_everything",
            the_pages_still_say_everything,
        ),
        (
            "four_concurrent_requests_of_each_page",
            four_concurrent_requests_of_each_page,
        ),
        (
            "past_the_budget_503_and_retry_after",
            past_the_budget_503_and_retry_after,
        ),
        (
            "the_axum_router_shares_the_budget",
            the_axum_router_shares_the_budget,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        println!("hostile_pages: {name} ...");
        let outcome = std::panic::catch_unwind(|| scenario(&addr));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("hostile_pages: {name} ok ({:.1?})", started.elapsed());
            }
            Err(_) => {
                failed += 1;
                println!("hostile_pages: {name} FAILED");
            }
        }
    }
    drop(server);
    black_box(&kept);
    let _ = std::fs::remove_dir_all(&dumps);
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Samples every allocation while each tenant's span runs the recursion, then goes back to
/// the default rate so the requests' own allocations barely touch the table.
fn build_heap() -> Vec<Vec<Box<[u8]>>> {
    heapwatch::set_sample_rate(1);
    let mut kept = Vec::with_capacity(TENANTS);
    for tenant in 0..TENANTS {
        let span = tracing::info_span!("request", tenant = tenant);
        let mut blocks = Vec::with_capacity(DEPTH);
        span.in_scope(|| recurse(DEPTH, &mut blocks));
        kept.push(blocks);
    }
    heapwatch::set_sample_rate(512 * 1024);
    kept
}

/// Keeps a block at each of `depth` levels: one distinct stack per level.
#[inline(never)]
fn recurse(depth: usize, blocks: &mut Vec<Box<[u8]>>) {
    if depth == 0 {
        return;
    }
    blocks.push(black_box(vec![depth as u8; 48]).into_boxed_slice());
    recurse(black_box(depth - 1), blocks);
    black_box(&blocks);
}

/// The live total `go tool pprof -top` shows for `url`, in bytes.
fn pprof_total(url: &str, scratch: &std::path::Path) -> (f64, String) {
    let text = common::go_pprof(
        &["-top", "-sample_index=inuse_space", "-unit=B"],
        url,
        scratch,
    );
    let total = text
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("% of ")?;
            rest.split_whitespace()
                .next()?
                .trim_end_matches('B')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no total in go tool pprof's output:\n{text}"));
    (total, text)
}

fn the_pages_still_say_everything(addr: &str) {
    let scratch =
        std::env::temp_dir().join(format!("heapwatch-hostile-pages-go-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let (legacy, legacy_top) =
        pprof_total(&format!("http://{addr}/debug/pprof/heap?debug=1"), &scratch);
    let (proto, _) = pprof_total(&format!("http://{addr}/debug/pprof/heap"), &scratch);
    println!("  go tool pprof: ?debug=1 {legacy} B live, protobuf {proto} B live");
    assert!(
        legacy > 0.0 && (legacy - proto).abs() <= proto * 0.01,
        "?debug=1 {legacy} B against pprof {proto} B"
    );
    assert!(
        legacy_top.contains("recurse"),
        "the recursion is not in the top:\n{legacy_top}"
    );
    let tags = common::go_pprof(
        &["-tags", "-sample_index=inuse_space"],
        &format!("http://{addr}/debug/pprof/heap"),
        &scratch,
    );
    let tenants = tags
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("tenant: Total"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .count();
    assert_eq!(
        tenants, TENANTS,
        "tenant labels in the protobuf page:\n{tags}"
    );
    // A delta (`?seconds=1`): what was allocated in the window, in use as of its end.
    let (delta_inuse, _) = pprof_total(
        &format!("http://{addr}/debug/pprof/heap?seconds=1"),
        &scratch,
    );
    println!("  go tool pprof: ?seconds=1 {delta_inuse} B live");
    assert!(
        (delta_inuse - proto).abs() <= proto * 0.02,
        "?seconds=1 reads {delta_inuse} B in use, the heap page {proto} B"
    );
    // The flamegraphs draw the whole heap: their totals are pprof's (each leaves out only
    // frames narrower than 0.1 % of it, which inferno would not draw either).
    for page in [
        "/debug/heap/flamegraph.svg",
        "/debug/heap/flamegraph.svg?by=span",
    ] {
        let svg = get(addr, page);
        assert_eq!(svg.status, 200, "{page}");
        let svg = String::from_utf8_lossy(&svg.body);
        if std::env::var_os("HOSTILE_PAGES_KEEP_SVG").is_some() {
            let _ = std::fs::write("/tmp/hostile_pages.svg", svg.as_bytes());
        }
        let total: f64 = svg
            .split("total_samples=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no total in {page}"));
        println!("  {page}: {total} B live drawn");
        assert!(
            (total - proto).abs() <= proto * 0.02,
            "{page} draws {total} B, pprof reads {proto} B"
        );
        if page.ends_with("by=span") {
            assert!(svg.contains("[no span]"), "{page} has no root by span");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

fn four_concurrent_requests_of_each_page(addr: &str) {
    let mut failures = Vec::new();
    for page in PAGES {
        // Warm once: the symbol tables and the listener's threads are not what is measured.
        let _ = get(addr, page);
        let before = Resident::reset();
        let answers: Vec<Answer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| get(addr, page))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a request thread"))
                .collect()
        });
        let rise = Resident::peak().saturating_sub(before);
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let refused = answers.iter().filter(|a| a.status == 503).count();
        let largest = answers.iter().map(|a| a.body.len()).max().unwrap_or(0);
        println!(
            "  {page:<38} peak +{:>7.1} MiB  200×{ok} 503×{refused}  body ≤ {largest} B",
            rise as f64 / (1u64 << 20) as f64
        );
        if rise > MAX_RISE_BYTES {
            failures.push(format!("{page}: peak rose {rise} B"));
        }
        if ok == 0 {
            failures.push(format!("{page}: no request answered 200"));
        }
        for answer in &answers {
            if answer.status == 503 && answer.retry_after.is_none() {
                failures.push(format!("{page}: 503 without Retry-After"));
            }
            if answer.status != 200 && answer.status != 503 {
                failures.push(format!("{page}: status {}", answer.status));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn past_the_budget_503_and_retry_after(addr: &str) {
    // 1 MiB: less than any heavy page of this heap needs.
    let tiny = 1 << 20;
    let previous = heapwatch::http::set_response_budget(tiny);
    let mut failures = Vec::new();
    for page in [
        "/debug/pprof/heap?debug=1",
        "/debug/heap/flamegraph.svg?by=span",
        "/debug/pprof/heap",
    ] {
        let _ = get(addr, page);
        let before = Resident::reset();
        let answers: Vec<Answer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| get(addr, page))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a request thread"))
                .collect()
        });
        let rise = Resident::peak().saturating_sub(before);
        println!(
            "  budget {tiny} B: {page:<38} peak +{:.1} MiB, statuses {:?}",
            rise as f64 / (1u64 << 20) as f64,
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        for answer in &answers {
            if answer.status != 503 {
                failures.push(format!(
                    "{page}: {} under a budget of {tiny} B",
                    answer.status
                ));
            } else if answer
                .retry_after
                .as_deref()
                .and_then(|s| s.parse::<u64>().ok())
                .is_none()
            {
                failures.push(format!("{page}: 503 without a Retry-After of seconds"));
            }
        }
        // The listener's own threads and buffers move a little; far less than a page.
        if rise > 4 * tiny as u64 {
            failures.push(format!(
                "{page}: peak rose {rise} B past a budget of {tiny} B"
            ));
        }
    }
    // Light pages still answer under the tiny budget.
    let metrics = get(addr, "/metrics");
    if metrics.status != 200 {
        failures.push(format!(
            "/metrics: {} under the tiny budget",
            metrics.status
        ));
    }
    heapwatch::http::set_response_budget(previous);
    let again = get(addr, "/debug/pprof/heap?debug=1");
    if again.status != 200 {
        failures.push(format!(
            "?debug=1 after the budget came back: {}",
            again.status
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The axum router (feature `axum`) under the same budget: four concurrent requests of the
/// heaviest page stay under the bound, and a spent budget answers 503 with `Retry-After`.
#[cfg(feature = "axum")]
fn the_axum_router_shares_the_budget(_: &str) {
    let served = served_axum::serve(heapwatch::http::router(), 2);
    let addr = served.addr();
    let addr = addr.as_str();
    let mut failures = Vec::new();
    for page in [
        "/debug/pprof/heap?debug=1",
        "/debug/heap/flamegraph.svg?by=span",
        "/debug/pprof/heap",
    ] {
        let _ = get(addr, page);
        let before = Resident::reset();
        let answers: Vec<Answer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| get(addr, page))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a request thread"))
                .collect()
        });
        let rise = Resident::peak().saturating_sub(before);
        println!(
            "  axum: {page:<38} peak +{:.1} MiB, statuses {:?}",
            rise as f64 / (1u64 << 20) as f64,
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        if rise > MAX_RISE_BYTES {
            failures.push(format!("axum {page}: peak rose {rise} B"));
        }
        if answers.iter().all(|a| a.status != 200) {
            failures.push(format!("axum {page}: no request answered 200"));
        }
    }
    let previous = heapwatch::http::set_response_budget(1 << 20);
    let refused = get(addr, "/debug/pprof/heap?debug=1");
    heapwatch::http::set_response_budget(previous);
    if refused.status != 503 || refused.retry_after.is_none() {
        failures.push(format!(
            "axum under a spent budget: {} with Retry-After {:?}",
            refused.status, refused.retry_after
        ));
    }
    drop(served);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[cfg(not(feature = "axum"))]
fn the_axum_router_shares_the_budget(_: &str) {
    println!("  built without feature `axum`: the router is not served (run with --all-features)");
}

/// The peak resident size, read from `/proc/self/status`.
struct Resident;

impl Resident {
    /// Gives freed memory back, resets `VmHWM` to the current resident size, and returns it.
    fn reset() -> u64 {
        // SAFETY: malloc_trim only releases free memory of glibc's heap; any pointer the
        // program holds stays valid.
        unsafe {
            libc::malloc_trim(0);
        }
        std::fs::write("/proc/self/clear_refs", "5")
            .expect("cannot reset VmHWM: /proc/self/clear_refs is not writable here");
        let hwm = status_kib("VmHWM:");
        let rss = status_kib("VmRSS:");
        assert!(
            hwm <= rss + 1024,
            "VmHWM {hwm} KiB not reset (VmRSS {rss} KiB)"
        );
        rss * 1024
    }

    fn peak() -> u64 {
        status_kib("VmHWM:") * 1024
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

/// A GET with `Connection: close`, under deadlines; the body as sent (chunked or not does not
/// matter here: only its size is reported).
fn get(addr: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let timeout = Some(Duration::from_secs(60));
    stream.set_read_timeout(timeout).expect("read timeout");
    stream.set_write_timeout(timeout).expect("write timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header in the answer to {path}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let retry_after = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    Answer {
        status,
        retry_after,
        body: raw[split + 4..].to_vec(),
    }
}
