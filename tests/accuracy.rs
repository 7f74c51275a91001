//! Accuracy of the sampled profile at the default 512 KiB rate, and exactness of the counters.
//!
//! Statistics decide the sizes. For a call site holding `T` bytes in blocks much smaller than
//! the rate `R`, the estimate's relative standard deviation is about `sqrt(R / T)`. The issue's
//! example amounts (64 MiB in 4 KiB blocks, 8 MiB in 1 MiB blocks) give 8.8 % and 14 %: a ±10 %
//! bound would fail about one run in four. So the sites here hold 640 MiB (σ ≈ 2.8 %, the bound
//! is 3.6σ) and 128 MiB in 2 MiB blocks (each sampled with probability 98 %). The seeds are
//! fixed and the allocation sequence is deterministic, so the outcome is reproducible; the
//! figures are printed beside their theoretical σ.
//!
//! Own binary without libtest's harness: the exact-counter checks compare global totals, so no
//! other thread may allocate meanwhile.

// One allocation per block is the point: the boxes inside vectors are deliberate.
#![allow(clippy::vec_box)]

use heapwatch::{Profile, SampleType};

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

const PAGE_BYTES: usize = 4096;
const PAGE_COUNT: usize = (640 << 20) / PAGE_BYTES;
const RECORD_BYTES: usize = 100;
const RECORD_COUNT: usize = (640 << 20) / RECORD_BYTES;
const BUFFER_BYTES: usize = 2 << 20;
const BUFFER_COUNT: usize = 64;

#[inline(never)]
fn hold_pages(out: &mut Vec<Vec<u8>>) {
    for i in 0..PAGE_COUNT {
        out.push(vec![i as u8; PAGE_BYTES]);
    }
}

#[inline(never)]
fn hold_records(out: &mut Vec<Box<[u8; RECORD_BYTES]>>) {
    for i in 0..RECORD_COUNT {
        out.push(Box::new([i as u8; RECORD_BYTES]));
    }
}

#[inline(never)]
fn hold_buffers(out: &mut Vec<Vec<u8>>) {
    for i in 0..BUFFER_COUNT {
        out.push(vec![i as u8; BUFFER_BYTES]);
    }
}

/// Flat value of the function whose name ends with `name`.
fn site(profile: &Profile, sample_type: SampleType, name: &str) -> i64 {
    profile
        .top_functions(sample_type)
        .into_iter()
        .find(|t| t.function.ends_with(name))
        .map_or(0, |t| t.flat)
}

fn check(
    failures: &mut Vec<String>,
    what: &str,
    estimate: i64,
    truth: f64,
    tolerance: f64,
    sigma: f64,
) {
    let error = estimate as f64 / truth - 1.0;
    let verdict = if error.abs() <= tolerance {
        "ok"
    } else {
        "FAIL"
    };
    println!(
        "  {what:<34} estimate {estimate:>12} truth {truth:>12.0} error {:>+6.2} % (σ ≈ {:.2} %, bound ±{:.0} %) {verdict}",
        error * 100.0,
        sigma * 100.0,
        tolerance * 100.0
    );
    if verdict != "ok" {
        failures.push(what.to_owned());
    }
}

fn relative_sigma(block: usize, count: usize, rate: u64) -> f64 {
    let p = 1.0 / heapwatch::unbias_factor(block as u64, rate);
    ((1.0 - p) / (count as f64 * p)).sqrt()
}

fn main() {
    let rate = heapwatch::DEFAULT_SAMPLE_RATE_BYTES;
    let mut failures = Vec::new();
    // alloc_space counts since start, so each trial adds to the last one's total.
    let mut buffers_alloc_previous = 0;
    // The first snapshot loads the symbolizer's list of loaded objects (about 2 KiB, kept for the
    // life of the process); take it before the trials so their live counters start settled.
    drop(heapwatch::snapshot());
    for seed in 1..=4u64 {
        println!("seed {seed}");
        let start = heapwatch::stats();
        heapwatch::set_sample_rate(rate);
        heapwatch::reseed_sampler(seed);

        let mut pages = Vec::with_capacity(PAGE_COUNT);
        let mut records = Vec::with_capacity(RECORD_COUNT);
        let mut buffers = Vec::with_capacity(BUFFER_COUNT);
        let holders = PAGE_COUNT * 24 + RECORD_COUNT * 8 + BUFFER_COUNT * 24;

        let before = heapwatch::stats();
        hold_pages(&mut pages);
        hold_records(&mut records);
        hold_buffers(&mut buffers);
        let after = heapwatch::stats();

        // Exact counters: exactly what was allocated, not an estimate.
        let bytes = (PAGE_COUNT * PAGE_BYTES
            + RECORD_COUNT * RECORD_BYTES
            + BUFFER_COUNT * BUFFER_BYTES) as u64;
        let blocks = (PAGE_COUNT + RECORD_COUNT + BUFFER_COUNT) as u64;
        let live_delta = after.live_bytes - before.live_bytes;
        let objects_delta = after.live_objects - before.live_objects;
        println!(
            "  exact counters: +{live_delta} bytes in +{objects_delta} blocks (expected {bytes} in {blocks}, plus {holders} bytes of holders allocated earlier)"
        );
        if live_delta != bytes || objects_delta != blocks {
            failures.push(format!("seed {seed}: exact counters"));
        }
        if after.allocated_bytes - before.allocated_bytes != bytes {
            failures.push(format!("seed {seed}: exact allocated total"));
        }

        let profile = heapwatch::snapshot();
        let sites = [
            ("hold_pages", PAGE_BYTES, PAGE_COUNT),
            ("hold_records", RECORD_BYTES, RECORD_COUNT),
            ("hold_buffers", BUFFER_BYTES, BUFFER_COUNT),
        ];
        for (name, block, count) in sites {
            let sigma = relative_sigma(block, count, rate);
            let space = site(&profile, SampleType::InuseSpace, name);
            let objects = site(&profile, SampleType::InuseObjects, name);
            check(
                &mut failures,
                &format!("{name} inuse_space"),
                space,
                (block * count) as f64,
                0.10,
                sigma,
            );
            check(
                &mut failures,
                &format!("{name} inuse_objects"),
                objects,
                count as f64,
                0.15,
                sigma,
            );
        }
        let buffers_alloc_before = site(&profile, SampleType::AllocSpace, "hold_buffers");

        // Free every other buffer: the live estimate halves, the allocated total does not.
        let mut index = 0;
        buffers.retain(|_| {
            index += 1;
            index % 2 == 0
        });
        let half = heapwatch::snapshot();
        let half_truth = (BUFFER_BYTES * BUFFER_COUNT / 2) as f64;
        let sigma = relative_sigma(BUFFER_BYTES, BUFFER_COUNT / 2, rate);
        let before_free = site(&profile, SampleType::InuseSpace, "hold_buffers");
        let after_free = site(&half, SampleType::InuseSpace, "hold_buffers");
        check(
            &mut failures,
            "hold_buffers inuse_space after half",
            after_free,
            half_truth,
            0.10,
            sigma,
        );
        check(
            &mut failures,
            "  … against half the earlier estimate",
            after_free,
            before_free as f64 / 2.0,
            0.10,
            sigma,
        );
        let alloc_after = site(&half, SampleType::AllocSpace, "hold_buffers");
        println!("  hold_buffers alloc_space before {buffers_alloc_before}, after freeing half {alloc_after}");
        if alloc_after != buffers_alloc_before {
            failures.push(format!("seed {seed}: alloc_space changed after frees"));
        }
        check(
            &mut failures,
            "hold_buffers alloc_space (this trial)",
            alloc_after - buffers_alloc_previous,
            (BUFFER_BYTES * BUFFER_COUNT) as f64,
            0.10,
            relative_sigma(BUFFER_BYTES, BUFFER_COUNT, rate),
        );
        // The untouched sites are not disturbed by the frees.
        if site(&half, SampleType::InuseSpace, "hold_pages")
            != site(&profile, SampleType::InuseSpace, "hold_pages")
        {
            failures.push(format!(
                "seed {seed}: hold_pages changed when buffers were freed"
            ));
        }

        buffers_alloc_previous = alloc_after;

        drop((pages, records, buffers, profile, half));
        let end = heapwatch::stats();
        println!(
            "  after freeing everything: live {} bytes (at the trial's start {})",
            end.live_bytes, start.live_bytes
        );
        if failures.is_empty()
            && (end.live_bytes, end.live_objects) != (start.live_bytes, start.live_objects)
        {
            failures.push(format!(
                "seed {seed}: live counters did not return to the trial's start"
            ));
        }
    }
    let own = heapwatch::profiler_stats();
    println!(
        "profiler memory at the end: {} bytes, {} live samples",
        own.profiler_bytes, own.live_samples
    );
    if failures.is_empty() {
        println!("accuracy: 1 passed, 0 failed");
    } else {
        println!("accuracy: 0 passed, 1 failed: {failures:?}");
        std::process::exit(1);
    }
}
