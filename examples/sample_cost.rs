//! Measures what one sampled allocation costs (stack capture, table insert and the matching
//! free), by sampling every allocation (rate 1) and timing alloc/free pairs.
//!
//! ```text
//! cargo run --release --example sample_cost
//! ```

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

#[inline(never)]
fn nested(depth: u32, n: u32, layout: Layout) -> f64 {
    if depth == 0 {
        pairs(n, layout)
    } else {
        std::hint::black_box(nested(depth - 1, n, layout))
    }
}

fn main() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    heapwatch::set_sample_rate(0);
    let unsampled = pairs(2_000_000, layout);
    heapwatch::set_sample_rate(1);
    let sampled = pairs(200_000, layout);
    let deep = nested(20, 200_000, layout);
    heapwatch::set_sample_rate(0);
    println!("alloc/free pair, unsampled:               {unsampled:8.1} ns");
    println!(
        "alloc/free pair, every allocation sampled: {sampled:8.1} ns ({:.0} ns per sample)",
        sampled - unsampled
    );
    println!(
        "  … 20 frames deeper:                      {deep:8.1} ns ({:.0} ns per sample)",
        deep - unsampled
    );
    println!("stack capture settled on: {:?}", heapwatch::stack_capture());
}
