//! The realistic service (`examples/orders_service`: axum on tokio, jemalloc, built in release
//! with line tables only) under interleaved traffic: `GET /orders/{id}` leaks 64 KiB a request
//! in a helper the compiler inlines into the async handler, `GET /report` allocates and drops
//! 8 MiB, `GET /health` is clean. Every reader of the heap must name the helper, fully
//! qualified: `go tool pprof -top` over HTTP, the flamegraph page, the JSON report and the leak
//! dump the detector writes. Then the same binary as services ship it: without DWARF (a
//! warning, once, and the handler named from the symbol table), and with its DWARF split into
//! a `.debug` file found through `.gnu_debuglink` (the helper named as with DWARF built in).
//!
//! Each request runs in a `request` span with its matched route, which `heapwatch::SpanLayer`
//! records: `go tool pprof -tags` gives the leaking route most of `inuse_space`, `-tagfocus` on
//! it puts the helper first, and the report, the leak dump, the flamegraph rooted at spans and
//! `/metrics` name the route.
//!
//! Requires Go (`golang-go`) and objcopy (`binutils`); a missing tool fails the test.
//!
//! Frame-pointer pass: not needed — the service as it ships (no frame pointers); naming under the frame-pointer walk is checked by `demo_outputs`, `source_lines` and `mixed_service`.

#![cfg(feature = "axum")]

mod common;

use heapwatch::watch::{list_sets, read_summary, DumpSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Compresses the detector's time in the example (window 30 s; floor window, confirmation,
/// suspect interval, warm-up and tick scaled as in `examples/mixed_service.rs`), so a leak
/// verdict comes within the run.
const DETECTOR_WINDOW: (&str, &str) = ("ORDERS_DETECTOR_WINDOW", "30s");
/// The leaking helper, fully qualified.
const HELPER: &str = "orders_service::handlers::retain_session_blob";
/// The burst: the report's function, or the handler it may be inlined into.
const REPORT: [&str; 2] = [
    "orders_service::report::render_report",
    "orders_service::handlers::get_report",
];
/// The leaking route's span, as heapwatch names it (span name, then the selected field).
const LEAKING_SPAN: &str = "request{route=/orders/{id}}";
/// The leaking route, as the `route` label holds it.
const LEAKING_ROUTE: &str = "/orders/{id}";
/// The text of the warning a binary without DWARF logs.
const NO_DWARF_WARNING: &str = "line-tables-only";
/// Frames that must never rank among the top five: heapwatch's own and the allocator shims.
const PLUMBING: [&str; 5] = [
    "heapwatch::",
    "track_alloc",
    "__rust_alloc",
    "__rdl_alloc",
    "alloc::alloc::",
];

/// Traffic: rounds of one leaking order, `health` health checks and, every `report_every`th
/// round, an 8 MiB report, started every `pace`. At least `min_leaks` rounds; then more, until
/// the caller is satisfied, `max_leaks` rounds or `deadline` after the start.
struct Load {
    min_leaks: usize,
    max_leaks: usize,
    report_every: usize,
    health: usize,
    pace: Duration,
    deadline: Duration,
}

/// 600 × 64 KiB ≈ 38 MiB kept (≈ 70 samples expected at the default 512 KiB), 60 reports of
/// 8 MiB (≈ 480 MiB allocated and dropped), 1,800 health checks, spread over ≈ 21 s so that
/// the detector's floor rises steadily; the leak goes on while the leak dump is awaited.
const FULL_LOAD: Load = Load {
    min_leaks: 600,
    max_leaks: 1500,
    report_every: 10,
    health: 3,
    pace: Duration::from_millis(35),
    deadline: Duration::from_secs(50),
};

/// For naming only (no detector): 300 × 64 KiB ≈ 19 MiB kept, 30 reports.
const LIGHT_LOAD: Load = Load {
    min_leaks: 300,
    max_leaks: 300,
    report_every: 10,
    health: 1,
    pace: Duration::from_millis(10),
    deadline: Duration::from_secs(30),
};

#[test]
fn every_reader_of_the_heap_names_the_inlined_leak() {
    common::require_tool("go", "golang-go");
    let scratch = scratch_dir("dwarf");
    let binary = common::example_binary("orders_service");
    let mut failures = Failures::default();
    // The premise: what is tested is the naming of an inlined function.
    let helper = HELPER.rsplit("::").next().unwrap();
    failures.check(!has_symbol(&binary, helper), || {
        format!("{helper} is not inlined (it has a symbol of its own): the example no longer tests inlined frames")
    });
    let service = Service::start(&binary, &scratch, &[DETECTOR_WINDOW]);
    let leaks = drive(&service.addr, &FULL_LOAD, || {
        leak_dump(&service.dumps).is_some()
    });
    println!("orders_service: {leaks} leaking requests sent");

    let inuse = pprof_top(&service.addr, "inuse_space", &scratch);
    check_names_the_helper(&inuse, &mut failures);
    let allocs = pprof_top(&service.addr, "alloc_space", &scratch);
    check_leak_and_burst_apart(&allocs, &mut failures);
    check_flamegraph(&service.addr, &mut failures);
    check_report(&service.addr, &mut failures);
    check_leak_dump(&service.dumps, &mut failures);
    check_spans(&service.addr, &scratch, &mut failures);

    let stderr = service.stop();
    failures.finish(&stderr);
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn without_dwarf_a_warning_once_and_the_handler_named_from_the_symbol_table() {
    common::require_tool("go", "golang-go");
    common::require_tool("objcopy", "binutils");
    let scratch = scratch_dir("nodwarf");
    let stripped = scratch.join("orders_service");
    common::objcopy(
        &["--strip-debug"],
        &common::example_binary("orders_service"),
        &stripped,
    );
    let service = Service::start(&stripped, &scratch, &[]);
    drive(&service.addr, &LIGHT_LOAD, || true);
    let mut failures = Failures::default();

    let inuse = pprof_top(&service.addr, "inuse_space", &scratch);
    let first = inuse.rows.first().cloned().unwrap_or_default();
    println!("orders_service without DWARF: first inuse_space entry {first:?}");
    // The helper and the handler's async body are inlined into axum's generic handler closure:
    // without DWARF, that closure is the outermost function the symbol table can name, and it
    // must come through whole (pprof once cut such names down to `::call::{{closure}}`).
    let handler_closure = first.starts_with("<F as axum::handler::Handler<")
        && first.ends_with(">>::call::{{closure}}");
    failures.check(handler_closure, || {
        format!(
            "without DWARF the first entry is not axum's handler closure, fully qualified: {first:?}\n{}",
            inuse.text
        )
    });
    // More symbolizations, each of which might warn again.
    pprof_top(&service.addr, "alloc_space", &scratch);
    check_flamegraph_status(&service.addr, &mut failures);

    let stderr = service.stop();
    let warnings = stderr
        .lines()
        .filter(|l| l.contains(NO_DWARF_WARNING))
        .count();
    failures.check(warnings == 1, || {
        format!("{warnings} warnings mentioning {NO_DWARF_WARNING:?} (expected exactly 1)")
    });
    failures.finish(&stderr);
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn split_debug_info_found_through_gnu_debuglink_names_the_inlined_leak() {
    common::require_tool("go", "golang-go");
    common::require_tool("objcopy", "binutils");
    let scratch = scratch_dir("debuglink");
    let binary = common::example_binary("orders_service");
    let debug = scratch.join("orders_service.debug");
    let stripped = scratch.join("orders_service");
    common::objcopy(&["--only-keep-debug"], &binary, &debug);
    // The link records the file's name; it is looked up next to the stripped binary.
    let link = format!("--add-gnu-debuglink={}", debug.display());
    common::objcopy(&["--strip-debug", &link], &binary, &stripped);
    let service = Service::start(&stripped, &scratch, &[]);
    drive(&service.addr, &LIGHT_LOAD, || true);
    let mut failures = Failures::default();

    let inuse = pprof_top(&service.addr, "inuse_space", &scratch);
    check_names_the_helper(&inuse, &mut failures);

    let stderr = service.stop();
    failures.check(!stderr.contains(NO_DWARF_WARNING), || {
        "the missing-DWARF warning was logged although the .debug file was found".to_owned()
    });
    failures.finish(&stderr);
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// A fresh scratch directory for one part of the test.
fn scratch_dir(part: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heapwatch-orders-{}-{part}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether a symbol of `binary`'s symbol table, demangled, contains `name`.
fn has_symbol(binary: &Path, name: &str) -> bool {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(binary).expect("read the example binary");
    let file = object::File::parse(&*data).expect("parse the example binary");
    file.symbols().any(|symbol| {
        symbol
            .name()
            .is_ok_and(|raw| rustc_demangle::demangle(raw).to_string().contains(name))
    })
}

/// The running example: its address, its dump directory and its standard error, collected
/// by a thread. Killed when dropped.
struct Service {
    child: Child,
    addr: String,
    dumps: PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl Service {
    /// Starts `binary` on 127.0.0.1:0 with dumps in `scratch/dumps`, and waits (30 s at most)
    /// for its `listening on http://ADDR` line.
    fn start(binary: &Path, scratch: &Path, env: &[(&str, &str)]) -> Service {
        let dumps = scratch.join("dumps");
        let mut child = Command::new(binary)
            .args(["--addr", "127.0.0.1:0", "--seconds", "240", "--dir"])
            .arg(&dumps)
            .envs(env.iter().copied())
            .current_dir(scratch)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let (first_line, listening) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next().and_then(Result::ok).unwrap_or_default());
            lines.for_each(drop);
        });
        let mut service = Service {
            child,
            addr: String::new(),
            dumps,
            stderr: Some(stderr),
        };
        let line = listening
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        match line.trim().strip_prefix("listening on http://") {
            Some(addr) => service.addr = addr.to_owned(),
            None => panic!(
                "no `listening on` line (got {line:?}); stderr:\n{}",
                service.stop()
            ),
        }
        println!("orders_service: {} at {}", binary.display(), service.addr);
        service
    }

    /// Kills the service; returns everything it wrote to standard error.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `load`; returns the number of leaking requests sent. `satisfied` is asked every ten
/// rounds once the minimum is sent.
fn drive(addr: &str, load: &Load, mut satisfied: impl FnMut() -> bool) -> usize {
    let start = Instant::now();
    let mut round = 0;
    while round < load.max_leaks && start.elapsed() < load.deadline {
        if round >= load.min_leaks && round % 10 == 0 && satisfied() {
            break;
        }
        get_ok(addr, &format!("/orders/{round}"));
        if round % load.report_every == 0 {
            let report = get_ok(addr, "/report");
            assert!(
                report.len() > 7 << 20,
                "a short report: {} bytes",
                report.len()
            );
        }
        for _ in 0..load.health {
            get_ok(addr, "/health");
        }
        round += 1;
        // Paced, not waiting on anything: the leak is spread over time for the detector.
        let next = load.pace * round as u32;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    assert!(
        round >= load.min_leaks,
        "only {round} leaking requests in {:?}",
        load.deadline
    );
    round
}

/// GET `path`, which must answer 200; its body.
fn get_ok(addr: &str, path: &str) -> Vec<u8> {
    let (status, body) = common::http_get(addr, path);
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    body
}

/// A `go tool pprof -top` report: its text and its function names, in order.
struct Top {
    text: String,
    rows: Vec<String>,
}

/// `go tool pprof -top -sample_index=INDEX http://ADDR/heapwatch/debug/pprof/heap`, with
/// pprof's default node selection (what a user sees); printed, so a failure shows it.
fn pprof_top(addr: &str, sample_index: &str, scratch: &Path) -> Top {
    let url = format!("http://{addr}/heapwatch/debug/pprof/heap");
    let index = format!("-sample_index={sample_index}");
    let text = common::go_pprof(&["-top", &index], &url, scratch);
    println!("go tool pprof -top {index} {url}:\n{text}");
    let rows = common::top_rows(&text)
        .into_iter()
        .map(|(_, function)| function)
        .collect();
    Top { text, rows }
}

/// The leaking helper, fully qualified (pprof may add ` (inline)`).
fn is_helper(function: &str) -> bool {
    function.contains(HELPER)
}

/// A frame without a name: `<unknown>`, or a bare address such as `0x0`.
fn is_nameless(function: &str) -> bool {
    let bare_hex = function
        .strip_prefix("0x")
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit()));
    bare_hex || function.contains("<unknown>")
}

/// The helper leads `inuse_space`, no plumbing in the top five, every frame named.
fn check_names_the_helper(top: &Top, failures: &mut Failures) {
    let first = top.rows.first().map(String::as_str).unwrap_or("");
    failures.check(is_helper(first), || {
        format!(
            "first inuse_space entry {first:?} is not the helper, fully qualified\n{}",
            top.text
        )
    });
    for function in top.rows.iter().take(5) {
        failures.check(!PLUMBING.iter().any(|p| function.contains(p)), || {
            format!("plumbing in the top five: {function:?}")
        });
    }
    for function in &top.rows {
        failures.check(!is_nameless(function), || {
            format!("a nameless frame: {function:?}")
        });
    }
}

/// Under `alloc_space`, the report (or the handler it is inlined into) and the leak are
/// separate entries.
fn check_leak_and_burst_apart(top: &Top, failures: &mut Failures) {
    let helper = top.rows.iter().position(|f| is_helper(f));
    let report = top
        .rows
        .iter()
        .position(|f| REPORT.iter().any(|r| f.contains(r)));
    failures.check(helper.is_some() && report.is_some() && helper != report, || {
        format!(
            "alloc_space: helper at row {helper:?}, report at row {report:?}: not two separate entries\n{}",
            top.text
        )
    });
}

fn check_flamegraph(addr: &str, failures: &mut Failures) {
    let (status, svg) = common::http_get(addr, "/heapwatch/debug/heap/flamegraph.svg");
    let svg = String::from_utf8_lossy(&svg);
    failures.check(status == 200 && svg.contains("retain_session_blob"), || {
        format!(
            "the flamegraph (status {status}, {} bytes) does not name retain_session_blob",
            svg.len()
        )
    });
}

fn check_flamegraph_status(addr: &str, failures: &mut Failures) {
    let (status, _) = common::http_get(addr, "/heapwatch/debug/heap/flamegraph.svg");
    failures.check(status == 200, || {
        format!("the flamegraph page: status {status}")
    });
}

/// The JSON report's top suspect (and its top site, where it lists sites) is the helper.
fn check_report(addr: &str, failures: &mut Failures) {
    let (status, body) = common::http_get(addr, "/heapwatch/debug/heap/report");
    let report: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(report) if status == 200 => report,
        _ => {
            let body = String::from_utf8_lossy(&body);
            return failures.check(false, || format!("the report: status {status}, {body}"));
        }
    };
    println!("the report's verdict: {}", report["verdict"]);
    for list in ["suspects", "top_sites"] {
        let first = report[list][0]["function"].as_str().unwrap_or("");
        failures.check(is_helper(first), || {
            format!(
                "the report's first of {list} is {first:?}, not the helper: {}",
                report[list]
            )
        });
    }
    for (list, key) in [("top_spans", "span"), ("suspects", "span")] {
        let first = report[list][0][key].as_str().unwrap_or("");
        failures.check(first == LEAKING_SPAN, || {
            format!(
                "the report's first of {list} has span {first:?}, not {LEAKING_SPAN}: {}",
                report[list]
            )
        });
    }
}

/// Heap by span: `go tool pprof -tags` gives the leaking route most of `inuse_space`,
/// `-tagfocus` on it puts the helper first, the flamegraph rooted at spans and `/metrics` name
/// the span.
fn check_spans(addr: &str, scratch: &Path, failures: &mut Failures) {
    let url = format!("http://{addr}/heapwatch/debug/pprof/heap");
    let tags = common::go_pprof(&["-tags", "-sample_index=inuse_space"], &url, scratch);
    println!("go tool pprof -tags {url}:\n{tags}");
    let routes = tag_rows(&tags, "route");
    let leaking = routes
        .iter()
        .find(|(_, value)| value == LEAKING_ROUTE)
        .map(|(percent, _)| *percent);
    failures.check(
        routes
            .first()
            .is_some_and(|(_, value)| value == LEAKING_ROUTE)
            && leaking.is_some_and(|percent| percent > 50.0),
        || format!("-tags: the leaking route does not hold most of inuse_space: {routes:?}"),
    );

    let focus = format!("-tagfocus=route={}", LEAKING_ROUTE.replace(['{', '}'], "."));
    let focused = common::go_pprof(
        &["-top", "-sample_index=inuse_space", &focus],
        &url,
        scratch,
    );
    println!("go tool pprof -top {focus} {url}:\n{focused}");
    let first = common::top_rows(&focused)
        .into_iter()
        .next()
        .map(|(_, function)| function)
        .unwrap_or_default();
    failures.check(is_helper(&first), || {
        format!("{focus}: the first row is {first:?}, not the helper")
    });

    let (status, svg) = common::http_get(addr, "/heapwatch/debug/heap/flamegraph.svg?by=span");
    let svg = String::from_utf8_lossy(&svg);
    let root = format!("span: {LEAKING_SPAN}");
    failures.check(status == 200 && svg.contains(&root), || {
        format!("the flamegraph rooted at spans (status {status}) has no frame {root:?}")
    });

    let (status, metrics) = common::http_get(addr, "/heapwatch/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    let series = format!("heapwatch_heap_span_live_bytes{{span=\"{LEAKING_SPAN}\"}}");
    let value = metrics
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse::<f64>().ok());
    failures.check(
        status == 200 && value.is_some_and(|bytes| bytes > 1e6),
        || format!("/metrics has no {series} over 1 MB (got {value:?})"),
    );
}

/// The rows of one tag in `go tool pprof -tags` output: (percent, value), in its order.
fn tag_rows(text: &str, tag: &str) -> Vec<(f64, String)> {
    let header = format!("{tag}: Total");
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with(&header))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let (figures, value) = line.split_once("): ")?;
            let percent = figures.split('(').nth(1)?.trim().trim_end_matches('%');
            Some((percent.trim().parse().ok()?, value.trim().to_owned()))
        })
        .collect()
}

/// The newest leak dump set in `dir`, if the detector wrote one.
fn leak_dump(dir: &Path) -> Option<DumpSet> {
    list_sets(dir)
        .into_iter()
        .rev()
        .find(|set| set.stem.ends_with("-leak"))
}

/// The leak dump's summary says leak, and its top suspect is the helper.
fn check_leak_dump(dir: &Path, failures: &mut Failures) {
    let Some(set) = leak_dump(dir) else {
        let sets: Vec<String> = list_sets(dir).into_iter().map(|s| s.stem).collect();
        return failures.check(false, || {
            format!("no leak dump set in {} (sets: {sets:?})", dir.display())
        });
    };
    let summary = read_summary(&set).expect("the leak dump's summary");
    let suspect = summary.suspects.first().map(|s| s.function.as_str());
    println!("leak dump {}: suspects {:?}", set.stem, summary.suspects);
    failures.check(suspect.is_some_and(is_helper), || {
        format!("the leak dump's top suspect is {suspect:?}, not the helper")
    });
    let top_span = summary.top_spans.first().map(|s| s.span.as_str());
    let suspect_span = summary.suspects.first().and_then(|s| s.span.as_deref());
    failures.check(
        top_span == Some(LEAKING_SPAN) && suspect_span == Some(LEAKING_SPAN),
        || {
            format!(
                "the leak dump's top span is {top_span:?} and its suspect's span {suspect_span:?}, not {LEAKING_SPAN}"
            )
        },
    );
}

/// Failed checks, all reported at the end: one run shows every name that is wrong.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    /// Panics listing the failures, with the service's standard error for context.
    fn finish(self, stderr: &str) {
        if !self.0.is_empty() {
            println!("the service's standard error:\n{stderr}");
            panic!("{} checks failed:\n- {}", self.0.len(), self.0.join("\n- "));
        }
    }
}
