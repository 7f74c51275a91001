//! A service with a memory leak, for watching heapwatch catch it: a loop that serves fake
//! requests (temporary buffers, freed at the end of each) and leaks a little on every request
//! from `leak_session_cache`. It configures the watch like any service would — in code, with
//! `HEAPWATCH_*` variables from the environment taking precedence — and runs until the kernel
//! kills it, unless told to stop.
//!
//! ```text
//! HEAPWATCH_LIMIT=256MiB cargo run --release --example leaky_service
//! cargo run --release --example leaky_service -- --seconds 5    # stop after 5 s
//! ```
//!
//! Options: `--seconds N` (stop after N seconds), `--leak-kib N` (leaked per request, default
//! 256), `--no-leak` (serve without leaking).

use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

struct Options {
    seconds: Option<f64>,
    leak_kib: usize,
}

fn options() -> Options {
    let mut options = Options {
        seconds: None,
        leak_kib: 256,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| {
                    eprintln!("leaky_service: {name} needs a number");
                    std::process::exit(2)
                })
        };
        match arg.as_str() {
            "--seconds" => options.seconds = Some(value("--seconds")),
            "--leak-kib" => options.leak_kib = value("--leak-kib") as usize,
            "--no-leak" => options.leak_kib = 0,
            other => {
                eprintln!("leaky_service: unknown argument {other:?} (see the example's docs)");
                std::process::exit(2)
            }
        }
    }
    options
}

/// Handles one request: parses a body into temporary buffers, all freed on return.
#[inline(never)]
fn handle_request(id: u64) -> usize {
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i as u64 ^ id) as u8).collect();
    let fields: Vec<String> = body.chunks(512).map(|c| format!("{:x}", c[0])).collect();
    black_box(fields.len() + body.len())
}

/// The bug: every request's session is cached and never evicted.
#[inline(never)]
fn leak_session_cache(cache: &mut Vec<Vec<u8>>, id: u64, kib: usize) {
    if kib > 0 {
        // Filled, not just reserved, so the pages are resident and charged to the cgroup.
        cache.push(vec![id as u8 | 1; kib * 1024]);
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let options = options();
    let watch = heapwatch::watch::Watch::builder()
        .dir("heapwatch-dumps")
        .tick(Duration::from_millis(250))
        .start()
        .expect("start the heapwatch watch");

    let start = Instant::now();
    let mut cache = Vec::new();
    let mut served = 0u64;
    while options
        .seconds
        .is_none_or(|limit| start.elapsed().as_secs_f64() < limit)
    {
        black_box(handle_request(served));
        leak_session_cache(&mut cache, served, options.leak_kib);
        served += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(watch);
    println!(
        "served {served} requests; leaked {} MiB",
        cache.len() * options.leak_kib / 1024
    );
}
