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

/// Allocates one block of `size` bytes and keeps it for good, before the measured loops: a
/// fresh thread cache hands the loop its slab's first block, 4 KiB-aligned, whose free takes
/// heapwatch's bitmap as only 1 in 256 16-byte blocks do (1 in 16 of 256 B; every block of
/// 4 KiB or more, which the 4 KiB row measures). Both examples call it, so both measure the
/// same addresses.
pub fn hold_first_block(size: usize) {
    let layout = Layout::from_size_align(size, 8).expect("layout");
    // SAFETY: non-zero size; never freed, on purpose.
    black_box(unsafe { alloc(layout) });
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
