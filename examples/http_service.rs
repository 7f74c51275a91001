//! A service with heapwatch's HTTP listener on: holds sessions (most of its heap), a cache
//! and some buffers, and serves `/metrics`, `/debug/pprof/heap` and the heap pages.
//!
//! ```text
//! cargo run --release --example http_service               # http://127.0.0.1:6060/
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap
//! ```
//!
//! `HEAPWATCH_ADDR` picks the address (`127.0.0.1:0` for any free port); the address is
//! printed as `listening on http://…`. `--seconds N` stops after N seconds.

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

/// 48 MiB of sessions, in 8 KiB blocks.
#[inline(never)]
fn hold_sessions() -> Vec<Vec<u8>> {
    let sessions: Vec<Vec<u8>> = (0..6144).map(|i| vec![i as u8; 8192]).collect();
    black_box(&sessions);
    sessions
}

/// 8 MiB of cache, in 64 KiB blocks.
#[inline(never)]
fn fill_cache() -> Vec<Vec<u8>> {
    let cache: Vec<Vec<u8>> = (0..128).map(|i| vec![i as u8; 64 * 1024]).collect();
    black_box(&cache);
    cache
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
    let seconds: Option<f64> = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|v| v.parse().ok());
    let _watch = heapwatch::watch::Watch::builder()
        .start()
        .expect("start the watch");
    let server = heapwatch::http::Server::builder()
        .start()
        .expect("start the HTTP listener");
    let sessions = hold_sessions();
    let cache = fill_cache();
    println!("listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    while seconds.is_none_or(|s| start.elapsed().as_secs_f64() < s) {
        black_box((sessions.len(), cache.len()));
        std::thread::sleep(Duration::from_millis(100));
    }
}
