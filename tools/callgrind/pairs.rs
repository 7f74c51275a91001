//! What both callgrind examples run: `N` alloc/free pairs of `SIZE` bytes through the global
//! allocator, inside `run_pairs` so callgrind can count only it
//! (`--toggle-collect=*run_pairs*`); or `N` rounds of the realistic workloads, inside
//! `run_realistic`.

#[path = "realistic.rs"]
mod realistic;

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;

#[inline(never)]
pub fn run_pairs(pairs: u64, size: usize) {
    let layout = Layout::from_size_align(size, 8).expect("layout");
    for _ in 0..pairs {
        // SAFETY: non-zero size; freed at once with the same layout.
        unsafe {
            let ptr = alloc(layout);
            black_box(ptr);
            if !ptr.is_null() {
                dealloc(ptr, layout);
            }
        }
    }
}

/// Allocates one block of `size` bytes and keeps it for good, before the measured loops: a
/// fresh thread cache hands the loop its slab's first block, 4 KiB-aligned, whose free takes
/// heapwatch's bitmap as only 1 in 256 16-byte blocks do (1 in 16 of 256 B; every block of
/// 4 KiB or more, which the 4 KiB row measures). Both examples call it, so both measure the
/// same addresses.
fn hold_first_block(size: usize) {
    let layout = Layout::from_size_align(size, 8).expect("layout");
    // SAFETY: non-zero size; never freed, on purpose.
    black_box(unsafe { alloc(layout) });
}

/// What the command line asks for: `N SIZE` pairs, or `N realistic` rounds of the realistic
/// workloads.
enum Run {
    Pairs { pairs: u64, size: usize },
    Realistic { rounds: u64 },
}

/// Runs what the command line asks for, after a warm-up of the thread cache.
pub fn run_from_args() {
    match args() {
        Run::Pairs { pairs, size } => {
            hold_first_block(size);
            run_pairs(1000, size);
            run_pairs(pairs, size);
        }
        Run::Realistic { rounds } => {
            let before = heapwatch::stats().freed_objects;
            realistic::run_realistic(rounds);
            // What heapwatch counted (zero under bare jemalloc); `scripts/callgrind.sh` reads it.
            println!("frees={}", heapwatch::stats().freed_objects - before);
        }
    }
}

/// `[N] [SIZE | realistic]` from the command line.
fn args() -> Run {
    let mut args = std::env::args().skip(1);
    let n = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    match args.next().as_deref() {
        Some("realistic") => Run::Realistic { rounds: n },
        size => Run::Pairs {
            pairs: n,
            size: size.and_then(|a| a.parse().ok()).unwrap_or(16),
        },
    }
}
