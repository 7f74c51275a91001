//! Measures what one sampled allocation costs (stack capture, table insert and the matching
//! free), by sampling every allocation (rate 1) and timing alloc/free pairs; then per capture
//! mode, at stacks of 15 and 40 frames.
//!
//! ```text
//! cargo run --release --example sample_cost
//! RUSTFLAGS="-C force-frame-pointers=yes" cargo run --release --example sample_cost
//! ```

use heapwatch::StackCapture;
use std::alloc::{alloc, dealloc, Layout};
use std::time::Instant;

#[global_allocator]
static ALLOC: heapwatch::Alloc<heapwatch::Jemalloc> = heapwatch::Alloc::new(heapwatch::Jemalloc);

#[inline(never)]
fn pairs(n: u32, layout: Layout) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: non-zero layout, freed with the same layout.
        unsafe {
            let p = alloc(layout);
            std::hint::black_box(p);
            dealloc(p, layout);
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Runs `pairs` `depth` calls deeper (a cost measurement: the recursion only adds frames).
#[inline(never)]
fn nested(depth: u32, n: u32, layout: Layout) -> f64 {
    if depth == 0 {
        pairs(n, layout)
    } else {
        std::hint::black_box(nested(depth - 1, n, layout))
    }
}

/// Keeps one sampled block allocated `depth` calls deeper than `nested` would, to count the
/// frames a sample at that depth captures.
#[inline(never)]
fn probe(depth: u32) {
    if depth == 0 {
        probe_site();
    } else {
        probe(depth - 1);
        std::hint::black_box(());
    }
}

#[inline(never)]
fn probe_site() {
    std::mem::forget(std::hint::black_box(vec![0u8; 4242]));
}

/// Frames captured by a sample taken in `pairs` under `nested(depth)`.
fn captured_frames(depth: u32) -> usize {
    heapwatch::set_stack_capture(StackCapture::Unwinder);
    heapwatch::set_sample_rate(1);
    probe(depth);
    heapwatch::set_sample_rate(0);
    let profile = heapwatch::snapshot();
    profile
        .samples
        .iter()
        .filter(|sample| {
            profile
                .stack_names(sample)
                .any(|name| name.ends_with("probe_site"))
        })
        .map(|sample| sample.locations.len())
        .max()
        .unwrap_or(0)
}

fn main() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    heapwatch::set_sample_rate(0);
    let unsampled = pairs(2_000_000, layout);
    heapwatch::set_sample_rate(1);
    let sampled = pairs(200_000, layout);
    let deep = nested(20, 200_000, layout);
    heapwatch::set_sample_rate(0);
    let settled = heapwatch::stack_capture();
    println!("alloc/free pair, unsampled:               {unsampled:8.1} ns");
    println!(
        "alloc/free pair, every allocation sampled: {sampled:8.1} ns ({:.0} ns per sample)",
        sampled - unsampled
    );
    println!(
        "  … 20 frames deeper:                      {deep:8.1} ns ({:.0} ns per sample)",
        deep - unsampled
    );
    println!("stack capture settled on: {settled:?}");

    // `probe` reaches `probe_site` as `nested` reaches `pairs`: one frame per level.
    let base = captured_frames(0);
    println!("\nper sample, by capture mode (frames captured, pprof's full stack):");
    let modes = [
        ("libgcc unwinder ", StackCapture::SystemUnwinder),
        ("caching unwinder", StackCapture::Unwinder),
        ("frame pointers  ", StackCapture::FramePointers),
    ];
    for target in [15, 40] {
        let depth = (target as u32).saturating_sub(base as u32);
        let frames = captured_frames(depth);
        for (name, mode) in modes {
            heapwatch::set_stack_capture(mode);
            heapwatch::set_sample_rate(1);
            // Warm-up: the caching unwinder confirms the chain once, framehop fills its cache.
            nested(depth, 1_000, layout);
            let mut best = f64::MAX;
            for _ in 0..5 {
                best = best.min(nested(depth, 50_000, layout));
            }
            heapwatch::set_sample_rate(0);
            println!(
                "  {name} {frames:3} frames: {best:8.1} ns a pair, {:6.0} ns per sample",
                best - unsampled
            );
        }
    }
    println!(
        "caching unwinder disagreements with libgcc: {}",
        heapwatch::__unwinder_disagreements()
    );
    heapwatch::set_stack_capture(StackCapture::Auto);
}
