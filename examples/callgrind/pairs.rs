//! The loop both callgrind examples run: `N` alloc/free pairs of `SIZE` bytes through the
//! global allocator, inside `run_pairs` so callgrind can count only it
//! (`--toggle-collect=*run_pairs*`).

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

/// `[pairs] [size]` from the command line.
pub fn args() -> (u64, usize) {
    let mut args = std::env::args().skip(1);
    let pairs = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let size = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    (pairs, size)
}
