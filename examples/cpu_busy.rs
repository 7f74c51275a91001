//! A service that burns CPU in one function and allocates in another, with heapwatch's
//! listener on: the CPU profile (feature `cpu`) names the first, the heap delta the second.
//!
//! ```text
//! cargo run --release --features cpu --example cpu_busy            # http://127.0.0.1:6060/
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/profile?seconds=5
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap?seconds=2
//! cargo run --release --features cpu --example cpu_busy -- --measure 5   # the sampler's cost
//! ```
//!
//! `HEAPWATCH_ADDR` picks the address (`127.0.0.1:0` for any free port), printed as
//! `listening on http://…`. `--measure S` serves nothing: it counts the busy loop's rounds for
//! S seconds without a CPU profile, then S seconds with one running, and prints both rates.

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Rounds of an integer mixer: pure CPU, no memory traffic, no calls. Small enough that the
/// compiler inlines it into its caller; the line tables still name it (an inlined frame).
fn burn_cpu(rounds: u64) -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        state = (state ^ round)
            .rotate_left(17)
            .wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    state
}

/// 64 KiB buffers allocated, filled and freed: ~13 MB/s, about 25 heap samples a second at
/// heapwatch's default 512 KiB rate.
fn churn_buffers(buffers: usize) -> usize {
    let mut total = 0;
    for i in 0..buffers {
        let buffer = vec![i as u8; 64 * 1024];
        total += black_box(buffer).len();
    }
    total
}

/// 16 MiB held for the whole run, in 64 KiB blocks: the live heap's top site.
fn hold_cache() -> Vec<Vec<u8>> {
    (0..256).map(|i| vec![i as u8; 64 * 1024]).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(seconds) = args
        .iter()
        .position(|a| a == "--measure")
        .and_then(|at| args.get(at + 1)?.parse::<u64>().ok())
    {
        measure(Duration::from_secs(seconds));
        return;
    }
    let server = heapwatch::http::Server::builder()
        .start()
        .expect("start the HTTP listener");
    let cache = hold_cache();
    std::thread::Builder::new()
        .name("burner".to_owned())
        .spawn(|| loop {
            black_box(burn_cpu(black_box(1 << 20)));
        })
        .expect("start the burner");
    std::thread::Builder::new()
        .name("churner".to_owned())
        .spawn(|| loop {
            black_box(churn_buffers(black_box(4)));
            std::thread::sleep(Duration::from_millis(20));
        })
        .expect("start the churner");
    println!("listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    loop {
        black_box(cache.len());
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The busy loop's rounds a second, for `window` without a CPU profile and for `window` with
/// one running (the sampler interrupting and unwinding 99 times a CPU-second).
fn measure(window: Duration) {
    let rate = |profiled: bool| {
        let profiler = profiled.then(|| {
            std::thread::spawn(move || heapwatch::cpu::profile(window + Duration::from_secs(1)))
        });
        // Let the sampler start before counting.
        std::thread::sleep(Duration::from_millis(200));
        let rounds = AtomicU64::new(0);
        let start = Instant::now();
        while start.elapsed() < window {
            black_box(burn_cpu(black_box(1 << 16)));
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        let per_second = rounds.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        if let Some(profiler) = profiler {
            let profile = profiler
                .join()
                .expect("profiler thread")
                .expect("a profile");
            println!(
                "profile: {} samples, the heaviest in {:?}",
                profile.total_samples(),
                profile
                    .samples
                    .first()
                    .and_then(|sample| profile.leaf_function(sample))
            );
        }
        per_second
    };
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows.push((rate(false), rate(true)));
    }
    for (without, with) in &rows {
        println!(
            "busy loop: {without:.0} rounds/s without a profile, {with:.0} with one running: {:+.2} %",
            (with / without - 1.0) * 100.0
        );
    }
}
