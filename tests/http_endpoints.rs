//! Real clients against a running service (`examples/http_service.rs`):
//! `go tool pprof -top http://…/debug/pprof/heap` names its top function; `promtool check
//! metrics` accepts `/metrics`; a real Prometheus server scraping it every second returns
//! `heapwatch_heap_live_bytes` through its query API; headless Chromium renders the flamegraph
//! page into a screenshot that is not blank. Each tool is required: a missing one fails the
//! test, saying which Debian package provides it (`.ci/run` installs them).
//!
//! Frame-pointer pass: not needed — real clients read the profile through the same encoder whichever walk captured it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Kills the child on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    for (tool, package) in [
        ("go", "golang-go"),
        ("promtool", "prometheus"),
        ("prometheus", "prometheus"),
        ("chromium", "chromium"),
    ] {
        common::require_tool(tool, package);
    }
    let scratch = std::env::temp_dir().join(format!("heapwatch-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    let mut service = Command::new(common::example_binary("http_service"))
        .env("HEAPWATCH_ADDR", "127.0.0.1:0")
        .env("HEAPWATCH_DIR", scratch.join("dumps"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start http_service");
    let stdout = service.stdout.take().unwrap();
    let service = Running(service);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("service prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    println!("http_endpoints: service at {addr}");

    pprof_over_http(&addr, &scratch);
    promtool_accepts_metrics(&addr, &scratch);
    prometheus_scrapes(&addr, &scratch);
    chromium_renders_the_flamegraph(&addr, &scratch);

    drop(service);
    std::fs::remove_dir_all(&scratch).unwrap();
    println!("http_endpoints: passed");
}

fn pprof_over_http(addr: &str, scratch: &Path) {
    let output = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(format!("http://{addr}/debug/pprof/heap"))
        .env("PPROF_TMPDIR", scratch)
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let top = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    println!("http_endpoints: go tool pprof's top row: {top}");
    assert!(
        // The sessions are allocated by the closure `hold_sessions` maps over, inlined into
        // it: named after it, as Go names `main.hold_sessions.func1`.
        top.ends_with("http_service::hold_sessions")
            || top.ends_with("http_service::hold_sessions::{{closure}} (inline)"),
        "top row {top:?} in:\n{text}"
    );
    // /debug/pprof/allocs is the same profile with alloc_space shown first, as Go serves it.
    let (status, body) = common::http_get(addr, "/debug/pprof/allocs");
    assert_eq!(status, 200);
    assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip");
}

fn promtool_accepts_metrics(addr: &str, scratch: &Path) {
    let (status, body) = common::http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("UTF-8 metrics");
    for name in [
        "heapwatch_heap_live_bytes",
        "heapwatch_heap_allocated_bytes_total",
        "heapwatch_sample_rate_bytes",
        "heapwatch_profiler_bytes",
        "heapwatch_symbolizer_bytes",
        "heapwatch_dumps_total",
        "heapwatch_jemalloc_resident_bytes",
        "heapwatch_verdict",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let file = scratch.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .expect("run promtool");
    println!(
        "http_endpoints: promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool rejected /metrics");
}

fn prometheus_scrapes(addr: &str, scratch: &Path) {
    let port = free_port();
    let config = scratch.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: heapwatch\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _server = Running(server);
    let prometheus = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = TcpStream::connect(&prometheus) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = write!(
                stream,
                "GET /api/v1/query?query=heapwatch_heap_live_bytes HTTP/1.1\r\nHost: {prometheus}\r\nConnection: close\r\n\r\n"
            );
            let mut raw = String::new();
            let _ = stream.read_to_string(&mut raw);
            if let Some(body) = raw.split("\r\n\r\n").nth(1) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(body.trim()) {
                    let result = &json["data"]["result"];
                    if let Some(first) = result.as_array().and_then(|r| r.first()) {
                        let value: f64 = first["value"][1]
                            .as_str()
                            .unwrap_or("0")
                            .parse()
                            .unwrap_or(0.0);
                        println!("http_endpoints: Prometheus returned heapwatch_heap_live_bytes = {value} for {}", first["metric"]["instance"]);
                        assert_eq!(first["metric"]["instance"].as_str(), Some(addr));
                        assert!(
                            value > 40.0 * 1048576.0,
                            "the service holds more than 40 MiB"
                        );
                        return;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned heapwatch_heap_live_bytes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn chromium_renders_the_flamegraph(addr: &str, scratch: &Path) {
    let shot = common::chromium_screenshot(
        &format!("http://{addr}/debug/heap/flamegraph.svg"),
        "1200,700",
        scratch,
        "flamegraph.png",
    );
    let colours: std::collections::HashSet<[u8; 3]> = shot.rgb.iter().copied().collect();
    // The memory palette: greens and blues; the background is near white.
    let drawn = shot
        .rgb
        .iter()
        .filter(|px| px.iter().any(|&c| c < 200))
        .count();
    let share = drawn as f64 / shot.rgb.len() as f64;
    println!(
        "http_endpoints: screenshot {}×{}, {} colours, {:.0} % not background",
        shot.width,
        shot.height,
        colours.len(),
        100.0 * share
    );
    assert!(
        colours.len() > 20 && share > 0.05,
        "the flamegraph screenshot looks blank"
    );
}
