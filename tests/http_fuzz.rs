//! The listener against hostile and broken input: random paths, queries, headers and bodies,
//! oversized and truncated requests, path tricks on the dump downloads, wrong methods and
//! tokens. No panic, the right status codes, and it keeps serving.
//!
//! Frame-pointer pass: not needed — the listener's parser; what the profile holds does not matter.

use heapwatch::http::{Limits, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Sends raw bytes (optionally closing the write side early) and returns the status, if a
/// response came.
fn send(addr: &str, request: &[u8], close_early: bool) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let _ = stream.write_all(request);
    if close_early {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn get(addr: &str, path: &str, extra: &str) -> Option<u16> {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes(),
        false,
    )
}

/// xorshift: deterministic, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max - 1` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

fn server(token: Option<&str>, dump_dir: &std::path::Path) -> Server {
    let mut builder = Server::builder()
        .addr("127.0.0.1:0")
        .dump_dir(dump_dir)
        .limits(Limits {
            read_timeout: Duration::from_millis(500),
            ..Limits::default()
        });
    if let Some(token) = token {
        builder = builder.token(token);
    }
    builder.start().expect("bind")
}

fn dump_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("heapwatch-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn statuses_for_known_cases() {
    let dir = dump_dir("known");
    std::fs::write(
        dir.join("heapwatch-20260101T000000Z-1-0001-signal.json"),
        b"{\"format\":\"x\"}",
    )
    .unwrap();
    std::fs::write(dir.join("secret.txt"), b"not listed").unwrap();
    let server = server(None, &dir);
    let addr = server.local_addr().to_string();
    assert_eq!(get(&addr, "/", ""), Some(200));
    assert_eq!(get(&addr, "/metrics", ""), Some(200));
    assert_eq!(get(&addr, "/debug/pprof/heap?gc=1&debug=0", ""), Some(200));
    assert_eq!(get(&addr, "/debug/heap/report", ""), Some(200));
    assert_eq!(get(&addr, "/debug/heap/dumps", ""), Some(200));
    assert_eq!(
        get(
            &addr,
            "/debug/heap/dumps/heapwatch-20260101T000000Z-1-0001-signal.json",
            ""
        ),
        Some(200)
    );
    for sneaky in [
        "/debug/heap/dumps/secret.txt",
        "/debug/heap/dumps/../secret.txt",
        "/debug/heap/dumps/..%2fsecret.txt",
        "/debug/heap/dumps//etc/passwd",
        "/debug/heap/dumps/heapwatch-20260101T000000Z-1-0001-signal.json/..",
        "/nothing",
    ] {
        assert_eq!(get(&addr, sneaky, ""), Some(404), "{sneaky}");
    }
    assert_eq!(
        send(
            &addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            false
        ),
        Some(405)
    );
    assert_eq!(send(&addr, b"DELETE / HTTP/1.1\r\n\r\n", false), Some(405));
    assert_eq!(
        send(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n", false),
        Some(200)
    );
    assert_eq!(send(&addr, b"garbage\r\n\r\n", false), Some(400));
    assert_eq!(
        send(
            &addr,
            b"GET / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
            false
        ),
        Some(413)
    );
    assert_eq!(
        send(
            &addr,
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        Some(400)
    );
    let huge_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(send(&addr, huge_header.as_bytes(), false), Some(431));
    // Truncated: the head never ends.
    assert_eq!(
        send(&addr, b"GET /metrics HTTP/1.1\r\nHost:", true),
        Some(400)
    );
    // Slow: nothing arrives within the read timeout.
    assert_eq!(send(&addr, b"GET /metr", false), Some(408));
    assert_eq!(get(&addr, "/metrics", ""), Some(200), "still serving");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bearer_token() {
    let dir = dump_dir("token");
    let server = server(Some("s3cret"), &dir);
    let addr = server.local_addr().to_string();
    assert_eq!(get(&addr, "/metrics", ""), Some(401));
    assert_eq!(
        get(&addr, "/metrics", "Authorization: Bearer wrong\r\n"),
        Some(401)
    );
    assert_eq!(
        get(&addr, "/metrics", "Authorization: Basic czNjcmV0\r\n"),
        Some(401)
    );
    assert_eq!(
        get(&addr, "/metrics", "Authorization: Bearer s3cret\r\n"),
        Some(200)
    );
    assert_eq!(
        get(
            &addr,
            "/debug/pprof/heap",
            "authorization: Bearer s3cret\r\n"
        ),
        Some(200)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_requests_never_break_it() {
    let dir = dump_dir("random");
    let server = server(None, &dir);
    let addr = server.local_addr().to_string();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let methods = ["GET", "HEAD", "POST", "PUT", "OPTIONS", "get", "", "G\0T"];
    let paths = [
        "/",
        "/metrics",
        "/debug/pprof/heap",
        "/debug/heap/dumps/",
        "/debug/heap/report",
        "/%00",
        "/..",
        "//",
        "*",
        "/debug/heap/dumps/\u{0}",
        "/debug/heap/flamegraph.svg?x=%ff",
    ];
    for round in 0..300 {
        let mut request = Vec::new();
        match rng.below(4) {
            // Random bytes.
            0 => request = rng.some_bytes(3000),
            // A plausible request with random parts.
            _ => {
                let method = methods[rng.below(methods.len())];
                let mut path = paths[rng.below(paths.len())].to_owned();
                if rng.below(2) == 0 {
                    path.push_str(&String::from_utf8_lossy(&rng.some_bytes(40)));
                }
                request.extend_from_slice(
                    format!("{method} {path} HTTP/1.{}\r\n", rng.below(3)).as_bytes(),
                );
                for _ in 0..rng.below(20) {
                    let name =
                        String::from_utf8_lossy(&[rng.bytes(1), rng.some_bytes(20)].concat())
                            .replace(['\r', '\n', ':'], "x");
                    let value =
                        String::from_utf8_lossy(&rng.some_bytes(200)).replace(['\r', '\n'], " ");
                    request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                if rng.below(3) == 0 {
                    request.extend_from_slice(
                        format!("Content-Length: {}\r\n", rng.below(3000)).as_bytes(),
                    );
                }
                if rng.below(5) != 0 {
                    request.extend_from_slice(b"\r\n");
                }
                let body = rng.some_bytes(2000);
                request.extend_from_slice(&body);
            }
        }
        let close_early = rng.below(2) == 0;
        let status = send(&addr, &request, close_early);
        if let Some(status) = status {
            assert!(
                [200, 400, 401, 404, 405, 408, 413, 431, 503].contains(&status),
                "round {round}: unexpected status {status}"
            );
        }
    }
    assert_eq!(
        get(&addr, "/metrics", ""),
        Some(200),
        "still serving after the fuzzing"
    );
    assert_eq!(get(&addr, "/debug/pprof/heap", ""), Some(200));
    std::fs::remove_dir_all(&dir).unwrap();
}
