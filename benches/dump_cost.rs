//! What a snapshot and a full dump set cost, with 1,000 and 10,000 distinct live stacks: the
//! time (criterion) and the extra memory (the peak of the process's heap above where it stood,
//! plus what heapwatch's own tables grew by), cold (first time: symbols resolved) and warm.
//!
//! A dump set is what heapwatch writes when memory runs short: the pprof profile, the
//! flamegraph SVG and the JSON summary, written to files by the watch thread (asked for with
//! `dump_now`; the time includes the hand-off to that thread, the same futex wake as the
//! allocator's early wake).
//!
//! Near the limit the set is written before naming (addresses, build ids, cached names, from
//! buffers sized beforehand): `raw_dump_set_*` measures that path, in a watch whose limit is
//! always under pressure, 200 times per table size, and prints the median, 99th percentile and
//! largest time and extra memory.

use criterion::Criterion;
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// heapwatch over jemalloc, inside a wrapper that tracks the heap's peak (shared atomics: fine
/// for a measurement, not for production).
struct PeakTracking<A> {
    inner: A,
    current: AtomicUsize,
    peak: AtomicUsize,
}

// SAFETY: forwards every call to `inner` unchanged; the counters around it do not allocate.
unsafe impl<A: GlobalAlloc> GlobalAlloc for PeakTracking<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract; passed on unchanged.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            let now = self.current.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            // Load first: the peak rarely moves, and a read-modify-write on every allocation
            // would make the measurement cost more than what it measures.
            if now > self.peak.load(Ordering::Relaxed) {
                self.peak.fetch_max(now, Ordering::Relaxed);
            }
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.current.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `dealloc`'s contract; passed on unchanged.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: PeakTracking<heapwatch::Alloc<heapwatch::Jemalloc>> = PeakTracking {
    inner: heapwatch::Alloc::new(heapwatch::Jemalloc),
    current: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

type Blocks = Vec<Box<[u8; 64]>>;

/// How long a new watch is left to settle before it is measured.
const SETTLE: Duration = Duration::from_secs(3);

// Two recursive functions that differ (so LLVM cannot merge them): the path's bits choose one
// at each level, so each path is a distinct stack.
#[inline(never)]
fn left(depth: u32, path: u32, out: &mut Blocks) {
    descend(depth, path, out);
    black_box(1u8);
}

#[inline(never)]
fn right(depth: u32, path: u32, out: &mut Blocks) {
    descend(depth, path, out);
    black_box(2u16);
}

#[inline(never)]
fn descend(depth: u32, path: u32, out: &mut Blocks) {
    if depth == 0 {
        out.push(Box::new([path as u8; 64]));
    } else if path & 1 == 0 {
        left(depth - 1, path >> 1, out);
    } else {
        right(depth - 1, path >> 1, out);
    }
}

/// Allocates one sampled block on each of `stacks` distinct stacks.
fn make_stacks(stacks: u32) -> Blocks {
    let mut blocks = Vec::with_capacity(stacks as usize);
    heapwatch::set_sample_rate(1);
    for path in 0..stacks {
        descend(14, path, &mut blocks);
    }
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    blocks
}

fn dumps_written() -> u64 {
    heapwatch::published::dumps_written()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Asks the watch thread for a dump set (pprof, flamegraph, JSON summary written to files)
/// and waits until it is on disk.
fn write_dump_set(watch: &heapwatch::watch::WatchHandle) {
    let before = dumps_written();
    watch.dump_now();
    while dumps_written() == before {
        assert_eq!(heapwatch::published::dump_errors(), 0, "dump failed");
        // Not a spin: on a machine of two cores a spinning waiter takes the core the watch
        // thread would run on.
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Runs `f` once; returns its time and the extra memory it took.
fn measure(f: impl FnOnce()) -> (Duration, usize) {
    let heap_before = ALLOC.current.load(Ordering::Relaxed);
    ALLOC.peak.store(heap_before, Ordering::Relaxed);
    let own_before = heapwatch::profiler_bytes();
    let start = Instant::now();
    f();
    let elapsed = start.elapsed();
    let heap_peak = ALLOC.peak.load(Ordering::Relaxed);
    let own_growth = heapwatch::profiler_bytes().saturating_sub(own_before);
    (elapsed, heap_peak - heap_before + own_growth)
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    let dir = std::env::temp_dir().join(format!("heapwatch-dump-cost-{}", std::process::id()));
    let start_watch = |limit: Option<u64>| {
        let builder = heapwatch::watch::Watch::builder()
            .dir(&dir)
            .tick(Duration::from_secs(3600))
            .min_interval(Duration::ZERO)
            .naming(heapwatch::watch::DumpNaming::InProcess)
            .keep(2);
        match limit {
            Some(limit) => builder.limit(limit),
            None => builder,
        }
        .start()
        .expect("start the watch")
    };
    let mut raw_rows = Vec::new();

    let server = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("start the listener");
    let mut rows = Vec::new();
    let mut serve_rows = Vec::new();
    for stacks in [1_000u32, 10_000] {
        let blocks = make_stacks(stacks);
        let distinct = heapwatch::profiler_stats().stacks;
        // Under pressure from the start (a 1 MiB limit): every dump is written before naming,
        // from the buffers the watch sized at its start for the table as it was then.
        let raw_watch = start_watch(Some(1 << 20));
        // Its first tick dumps for the thresholds it finds crossed; its naming thread names
        // the table's stacks at start. Measured once both are done.
        std::thread::sleep(SETTLE);
        write_dump_set(&raw_watch);
        let mut times = Vec::new();
        let mut extra = Vec::new();
        for _ in 0..200 {
            let (time, memory) = measure(|| write_dump_set(&raw_watch));
            times.push(time);
            extra.push(memory);
        }
        times.sort();
        extra.sort();
        let at = |p: usize| (times.len() - 1) * p / 100;
        raw_rows.push(format!(
            "| {stacks} | {distinct} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} KiB | {:.0} KiB | {:.0} KiB |",
            times[at(50)].as_secs_f64() * 1e3,
            times[at(99)].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            extra[at(50)] as f64 / 1024.0,
            extra[at(99)] as f64 / 1024.0,
            extra[extra.len() - 1] as f64 / 1024.0,
        ));
        c.bench_function(&format!("raw_dump_set_{stacks}_stacks"), |b| {
            b.iter(|| write_dump_set(&raw_watch))
        });
        drop(raw_watch);
        let watch = start_watch(None);
        // The naming thread names the table's stacks when the watch starts; a dump measured
        // meanwhile would wait for the symbolizer and count its memory.
        std::thread::sleep(SETTLE);

        let (cold_time, cold_memory) = measure(|| write_dump_set(&watch));
        let (snapshot_time, snapshot_memory) = measure(|| drop(black_box(heapwatch::snapshot())));
        let (warm_time, warm_memory) = measure(|| write_dump_set(&watch));
        rows.push(format!(
            "| {stacks} | {distinct} | {:.1} ms, {:.1} MiB | {:.1} ms, {:.1} MiB | {:.1} ms, {:.1} MiB |",
            snapshot_time.as_secs_f64() * 1e3,
            snapshot_memory as f64 / (1 << 20) as f64,
            cold_time.as_secs_f64() * 1e3,
            cold_memory as f64 / (1 << 20) as f64,
            warm_time.as_secs_f64() * 1e3,
            warm_memory as f64 / (1 << 20) as f64,
        ));

        c.bench_function(&format!("snapshot_{stacks}_stacks"), |b| {
            b.iter(|| black_box(heapwatch::snapshot()))
        });
        c.bench_function(&format!("dump_set_{stacks}_stacks"), |b| {
            b.iter(|| write_dump_set(&watch))
        });
        let profile = heapwatch::snapshot();
        c.bench_function(&format!("encode_pprof_{stacks}_stacks"), |b| {
            b.iter(|| {
                let mut out = Vec::new();
                heapwatch::encode::write_pprof(&profile, &mut out).expect("in memory");
                out
            })
        });
        c.bench_function(&format!("encode_flamegraph_{stacks}_stacks"), |b| {
            b.iter(|| {
                let mut out = Vec::new();
                heapwatch::encode::write_flamegraph(
                    &profile,
                    heapwatch::SampleType::InuseSpace,
                    "heap",
                    &mut out,
                )
                .expect("in memory");
                out
            })
        });
        c.bench_function(&format!("encode_summary_{stacks}_stacks"), |b| {
            b.iter(|| {
                let mut out = Vec::new();
                heapwatch::encode::write_top_text(&profile, 20, &mut out).expect("in memory");
                out
            })
        });
        // Serving /debug/pprof/heap over the built-in listener: one whole HTTP exchange.
        let addr = server.local_addr();
        let fetch = || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET /debug/pprof/heap HTTP/1.1\r\nHost: bench\r\n\r\n")
                .expect("request");
            let mut response = Vec::new();
            stream.read_to_end(&mut response).expect("response");
            assert!(response.starts_with(b"HTTP/1.1 200"));
            response.len()
        };
        let (serve_time, serve_memory) = measure(|| {
            black_box(fetch());
        });
        serve_rows.push(format!(
            "| {stacks} | {:.1} ms | {:.1} MiB |",
            serve_time.as_secs_f64() * 1e3,
            serve_memory as f64 / (1 << 20) as f64
        ));
        c.bench_function(&format!("serve_pprof_heap_{stacks}_stacks"), |b| {
            b.iter(fetch)
        });
        drop(watch);
        drop(blocks);
    }
    c.final_summary();
    let _ = std::fs::remove_dir_all(&dir);

    println!("| stacks made | distinct stacks in the table | dump before naming: median | p99 | max | extra memory: median | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in raw_rows {
        println!("{row}");
    }
    println!();

    println!("| stacks made | distinct stacks in the table | snapshot (warm) | dump set, first (symbols cold) | dump set, warm |");
    println!("|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!("| stacks | serve /debug/pprof/heap (first) | extra memory |");
    println!("|---:|---:|---:|");
    for row in serve_rows {
        println!("{row}");
    }
}
