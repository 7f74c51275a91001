//! CPU profiles and the rest of Go's pprof endpoint, against a running service
//! (`examples/cpu_busy.rs`: a thread burning CPU in `burn_cpu`, another allocating in
//! `churn_buffers`, 16 MiB held by `hold_cache`), read by the real client:
//!
//! - `go tool pprof -top …/debug/pprof/profile?seconds=5` names `cpu_busy::burn_cpu` among the
//!   top rows (most of the profile's time under it); a second request while it runs is refused
//!   at once, 409, with a body saying a profile is already running; `/metrics` answers
//!   meanwhile;
//! - `go tool pprof -top …/debug/pprof/heap?seconds=2` reads the delta: `churn_buffers` at the
//!   top of alloc_space, and `hold_cache` (allocated before the window) absent;
//! - `go tool pprof -top …/debug/pprof/heap?debug=1` reads Go's legacy text format;
//! - hostile: 8 CPU profiles asked at once get exactly one 200 and seven 409s while `/metrics`
//!   still answers; two heap deltas at once, one 200 and one 409; garbage `seconds` values
//!   get 400 with a body naming the parameter.
//!
//! `go` is required (Debian package golang-go): without it the test fails, saying so.
//!
//! Frame-pointer pass: not needed — the CPU sampler unwinds with libgcc whatever the build, and the heap pages read the same profiles through the same code whichever walk captured them.

use std::io::{BufRead, BufReader};
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

fn main() {
    common::require_tool("go", "golang-go");
    let scratch = std::env::temp_dir().join(format!("heapwatch-cpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    let mut service = Command::new(common::example_binary("cpu_busy"))
        .env("HEAPWATCH_ADDR", "127.0.0.1:0")
        .env_remove("HEAPWATCH_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cpu_busy");
    let stdout = service.stdout.take().unwrap();
    let service = Running(service);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the service prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    println!("cpu_profile: service at {addr}");

    cpu_profile_names_the_busy_function(&addr, &scratch);
    a_second_profile_is_refused_cleanly(&addr, &scratch);
    heap_delta_shows_what_was_allocated_in_the_window(&addr, &scratch);
    legacy_text_is_read_by_pprof(&addr, &scratch);
    concurrent_profiles_get_one_answer_and_409s(&addr);
    garbage_seconds_are_refused(&addr);

    drop(service);
    std::fs::remove_dir_all(&scratch).unwrap();
    println!("cpu_profile: passed");
}

fn cpu_profile_names_the_busy_function(addr: &str, scratch: &Path) {
    let text = common::go_pprof(
        &["-top", "-nodecount=1000"],
        &format!("http://{addr}/debug/pprof/profile?seconds=5"),
        scratch,
    );
    assert!(text.contains("Type: cpu"), "{text}");
    // cum% of the busy function (named by its line tables, inlined or not).
    let cum = text
        .lines()
        .filter(|row| row.contains("cpu_busy::burn_cpu"))
        .filter_map(|row| {
            let cum = row.split_whitespace().nth(4)?;
            cum.trim_end_matches('%').parse::<f64>().ok()
        })
        .fold(0.0, f64::max);
    println!("cpu_profile: cpu_busy::burn_cpu holds {cum}% of the CPU profile");
    assert!(cum >= 50.0, "burn_cpu at {cum}% in:\n{text}");
}

/// Sends a GET and leaves its answer to be read on a thread: (status, body).
fn send_get(addr: &str, path: &str) -> std::thread::JoinHandle<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    std::thread::spawn(move || {
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the answer");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        (status, raw[split + 4..].to_vec())
    })
}

/// While a profile runs, `go tool pprof` asking for another fails with the server's 409 and its
/// message, and `/metrics` answers. Which of two requests takes the sampler is a race, so the
/// one held is this test's own, seen to be held when a probe is refused; should the probe win
/// instead, the test's own is refused at once, and the round is run again.
fn a_second_profile_is_refused_cleanly(addr: &str, scratch: &Path) {
    for attempt in 1..=3 {
        // Sent before any probe is, so the server has it first (a probe can still win the
        // race to a worker, rarely).
        let holder = send_get(addr, "/debug/pprof/profile?seconds=4");
        let mut held = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        while !held && !holder.is_finished() && Instant::now() < deadline {
            let (status, body) = common::http_get(addr, "/debug/pprof/profile?seconds=1");
            match status {
                409 => {
                    let body = String::from_utf8_lossy(&body);
                    assert!(body.contains("already running"), "409 body: {body}");
                    held = true;
                }
                200 => break,
                other => panic!("a second CPU profile got {other}"),
            }
        }
        if !held {
            let (status, _) = holder.join().expect("holder thread");
            println!(
                "cpu_profile: attempt {attempt}: the probe came first (holder got {status}); again"
            );
            continue;
        }
        let output = Command::new("go")
            .args(["tool", "pprof", "-top"])
            .arg(format!("http://{addr}/debug/pprof/profile?seconds=1"))
            .env("PPROF_TMPDIR", scratch)
            .output()
            .expect("run go tool pprof (Debian package golang-go)");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "pprof read a profile while another ran: {said}"
        );
        // Go 1.19's pprof shows the status only (later ones add the body, which the probe
        // above has read: "a CPU profile is already running …").
        assert!(
            said.contains("409 Conflict"),
            "pprof's error does not carry the refusal: {said}"
        );
        let (metrics, text) = common::http_get(addr, "/metrics");
        assert_eq!(metrics, 200);
        assert!(String::from_utf8_lossy(&text).contains("heapwatch_heap_live_bytes"));
        let (status, body) = holder.join().expect("holder thread");
        assert_eq!(status, 200);
        assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzipped profile");
        println!(
            "cpu_profile: go tool pprof asking during a profile: {}",
            said.lines()
                .find(|l| l.contains("409"))
                .unwrap_or("")
                .trim()
        );
        return;
    }
    panic!("three times the probe came before the test's own request");
}

fn heap_delta_shows_what_was_allocated_in_the_window(addr: &str, scratch: &Path) {
    let text = common::go_pprof(
        &["-top", "-nodecount=1000", "-sample_index=alloc_space"],
        &format!("http://{addr}/debug/pprof/heap?seconds=2"),
        scratch,
    );
    let rows = common::top_rows(&text);
    println!("cpu_profile: heap delta's top row: {:?}", rows.first());
    assert_eq!(
        rows.first().map(|(_, function)| function.as_str()),
        Some("cpu_busy::churn_buffers"),
        "{text}"
    );
    assert!(
        !text.contains("hold_cache"),
        "allocated before the window, yet in the delta:\n{text}"
    );
}

fn legacy_text_is_read_by_pprof(addr: &str, scratch: &Path) {
    let (status, body) = common::http_get(addr, "/debug/pprof/heap?debug=1");
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("heap profile: "), "{body}");
    assert!(
        body.contains("cpu_busy::hold_cache"),
        "the # lines name frames:\n{body}"
    );
    let text = common::go_pprof(
        &["-top", "-sample_index=inuse_space"],
        &format!("http://{addr}/debug/pprof/heap?debug=1"),
        scratch,
    );
    assert!(text.contains("Type: inuse_space"), "{text}");
    let rows = common::top_rows(&text);
    assert!(!rows.is_empty(), "{text}");
    println!(
        "cpu_profile: go tool pprof read ?debug=1; top row {:?}",
        rows[0]
    );
}

fn concurrent_profiles_get_one_answer_and_409s(addr: &str) {
    let started = Instant::now();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.to_owned();
            std::thread::spawn(move || common::http_get(&addr, "/debug/pprof/profile?seconds=3"))
        })
        .collect();
    // While the one admitted runs (3 s), the refused come back at once and /metrics answers.
    let (metrics, _) = common::http_get(addr, "/metrics");
    assert_eq!(metrics, 200);
    let answered_meanwhile = started.elapsed() < Duration::from_secs(3);
    let mut statuses: Vec<u16> = requests
        .into_iter()
        .map(|request| {
            let (status, body) = request.join().expect("request thread");
            if status == 409 {
                assert!(String::from_utf8_lossy(&body).contains("already running"));
            } else {
                assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzipped profile");
            }
            status
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    println!("cpu_profile: 8 profiles at once: one 200, seven 409; /metrics answered meanwhile: {answered_meanwhile}");

    let deltas: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.to_owned();
            std::thread::spawn(move || common::http_get(&addr, "/debug/pprof/allocs?seconds=2").0)
        })
        .collect();
    let mut statuses: Vec<u16> = deltas.into_iter().map(|d| d.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
}

fn garbage_seconds_are_refused(addr: &str) {
    let huge = "9".repeat(400);
    for page in ["profile", "heap", "allocs"] {
        for seconds in ["-1", "0", "1e9", "abc", "121", "", "1.5", huge.as_str()] {
            let (status, body) =
                common::http_get(addr, &format!("/debug/pprof/{page}?seconds={seconds}"));
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, 400, "{page}?seconds={seconds}: {body}");
            assert!(
                body.starts_with("seconds="),
                "{page}?seconds={seconds}: {body}"
            );
        }
    }
    let (status, _) = common::http_get(addr, "/debug/pprof/heap?seconds=1&debug=1");
    assert_eq!(status, 400);
    let (status, _) = common::http_get(addr, "/debug/pprof/heap?debug=7");
    assert_eq!(status, 400);
    println!("cpu_profile: garbage seconds and debug values refused with 400");
}
