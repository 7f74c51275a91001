//! heapwatch's demo: allocate from three named functions in known amounts, then write what
//! heapwatch saw — a pprof heap profile, a flamegraph and a text summary.
//!
//! ```text
//! cargo run --release --example demo [OUT_DIR]     # default ./heapwatch-out
//! go tool pprof -top heapwatch-out/heap.pb.gz
//! ```

// One allocation per block is the point: the boxes inside vectors are deliberate.
#![allow(clippy::vec_box)]

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::PathBuf;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

/// 64 MiB in 4 KiB blocks: a page cache.
#[inline(never)]
fn cache_pages() -> Vec<Vec<u8>> {
    let mut pages = Vec::with_capacity(16 * 1024);
    for i in 0..16 * 1024 {
        pages.push(vec![i as u8; 4096]);
    }
    pages
}

/// 16 MiB in 100-byte blocks: many small records.
#[inline(never)]
fn parse_records() -> Vec<Box<[u8; 100]>> {
    let mut records = Vec::with_capacity((16 << 20) / 100);
    for i in 0..(16 << 20) / 100 {
        records.push(Box::new([i as u8; 100]));
    }
    records
}

/// 8 MiB in 1 MiB blocks: large buffers.
#[inline(never)]
fn reserve_buffers() -> Vec<Vec<u8>> {
    let mut buffers = Vec::with_capacity(8);
    for i in 0..8 {
        buffers.push(vec![i as u8; 1 << 20]);
    }
    buffers
}

fn rss_bytes() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("heapwatch-out"));
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    let pages = cache_pages();
    let records = parse_records();
    let buffers = reserve_buffers();

    let before = heapwatch::profiler_stats();
    let rss_before = rss_bytes();
    let profile = heapwatch::snapshot();
    let after = heapwatch::profiler_stats();
    let rss_after = rss_bytes();

    let pprof_path = out_dir.join("heap.pb.gz");
    heapwatch::encode::write_pprof(&profile, BufWriter::new(File::create(&pprof_path)?))?;
    let svg_path = out_dir.join("heap.svg");
    heapwatch::encode::write_flamegraph(
        &profile,
        heapwatch::SampleType::InuseSpace,
        "heapwatch demo",
        BufWriter::new(File::create(&svg_path)?),
    )?;
    let summary_path = out_dir.join("summary.txt");
    let mut summary = Vec::new();
    heapwatch::encode::write_top_text(&profile, 10, &mut summary)?;
    fs::write(&summary_path, &summary)?;

    let stats = heapwatch::stats();
    print!("{}", String::from_utf8_lossy(&summary));
    println!();
    println!(
        "exact counters: {} live in {} blocks; {} allocated in total",
        heapwatch::encode::human_bytes(stats.live_bytes as i64),
        stats.live_objects,
        heapwatch::encode::human_bytes(stats.allocated_bytes as i64),
    );
    println!(
        "profiler: {} live samples, {} stacks, {} own memory; first symbolization took {} of \
         symbol index and cache and {} of resident memory",
        after.live_samples,
        after.stacks,
        heapwatch::encode::human_bytes(after.profiler_bytes as i64),
        heapwatch::encode::human_bytes(
            (after.symbol_cache_bytes - before.symbol_cache_bytes) as i64
        ),
        heapwatch::encode::human_bytes(rss_after.saturating_sub(rss_before) as i64),
    );
    println!();
    for path in [&pprof_path, &svg_path, &summary_path] {
        println!("wrote {}", path.display());
    }
    drop((pages, records, buffers));
    Ok(())
}
