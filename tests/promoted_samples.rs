//! Sampled blocks promoted to a 4 KiB boundary, through every path that hands them back: at the
//! default rate every live sample sits on such a boundary (so a free tells an unsampled block by
//! its address); blocks of many sizes, some zeroed, are reallocated (grown, shrunk, moved in
//! and out of sampling) with their contents checked, and freed on their own thread and on
//! others; a finer rate's unaligned samples close every thread's free gate while other threads
//! free, and their frees reopen it. Afterwards the exact counters and the table are back where
//! they started. Over jemalloc (whose sized free would corrupt its heap if a promoted block came
//! back at the caller's layout) and the system allocator.
//!
//! Own binary without libtest's harness: the counters are global, so nothing else may allocate.
//!
//! Frame-pointer pass: not needed — what is checked is where sampled blocks live and how they
//! are freed, not their stacks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;

#[global_allocator]
static ALLOC: heapwatch::Alloc<Checked<heapwatch::Jemalloc>> =
    heapwatch::Alloc::new(Checked(heapwatch::Jemalloc));

/// A second heapwatch over the system allocator, driven by hand.
static OVER_SYSTEM: heapwatch::Alloc<Checked<System>> = heapwatch::Alloc::new(Checked(System));

/// An inner allocator that remembers the layout of every block it hands out and fails the test
/// if a block comes back at any other: a promoted block freed or reallocated at the caller's
/// layout would corrupt jemalloc's heap silently (its sized free trusts the size), so it is
/// caught here instead. Its map lives in `System` memory, outside the allocator it checks.
struct Checked<A>(A);

type LayoutMap = hashbrown::HashMap<usize, (usize, usize), foldhash::fast::FixedState, System>;

static LIVE: Mutex<Option<LayoutMap>> = Mutex::new(None);
/// Blocks handed back at a layout other than their own.
static MISMATCHES: AtomicUsize = AtomicUsize::new(0);
/// Blocks handed out at a 4 KiB alignment the caller did not ask for.
static PROMOTED: AtomicUsize = AtomicUsize::new(0);

fn remember(ptr: *mut u8, layout: Layout) {
    if ptr.is_null() {
        return;
    }
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.get_or_insert_with(|| LayoutMap::with_hasher_in(Default::default(), System))
        .insert(ptr as usize, (layout.size(), layout.align()));
}

fn forget(ptr: *mut u8, layout: Layout) {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    let known = live.as_mut().and_then(|live| live.remove(&(ptr as usize)));
    if known != Some((layout.size(), layout.align())) {
        MISMATCHES.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to `A` unchanged; the bookkeeping allocates from `System` only.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Checked<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() == 4096 {
            PROMOTED.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { self.0.alloc(layout) };
        remember(ptr, layout);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() == 4096 {
            PROMOTED.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        remember(ptr, layout);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        forget(ptr, layout);
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        forget(ptr, layout);
        // SAFETY: as above.
        let new_ptr = unsafe { self.0.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            remember(ptr, layout);
        } else {
            remember(
                new_ptr,
                Layout::from_size_align(new_size, layout.align()).unwrap(),
            );
        }
        new_ptr
    }
}

/// A block filled with a pattern of its own, to tell a lost or mixed-up copy.
struct Block {
    ptr: *mut u8,
    layout: Layout,
    seed: u8,
}

// SAFETY: the block is owned by whoever holds the value; it is only moved between threads.
unsafe impl Send for Block {}

fn fill(ptr: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: `ptr` is live for at least `len` bytes.
        unsafe { ptr.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(ptr: *const u8, len: usize, seed: u8, what: &str) {
    for i in 0..len {
        // SAFETY: as in `fill`.
        let byte = unsafe { ptr.add(i).read() };
        assert_eq!(
            byte,
            seed.wrapping_add(i as u8),
            "{what}: byte {i} of {len}"
        );
    }
}

/// xorshift, so the sizes are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn size(&mut self) -> usize {
        // Mostly small blocks, some of a few KiB, a few large.
        match self.next() % 100 {
            0..=79 => 8 + (self.next() % 512) as usize,
            80..=97 => 1024 + (self.next() % 8192) as usize,
            _ => (64 << 10) + (self.next() % (1 << 20)) as usize,
        }
    }
}

fn allocate<A: GlobalAlloc>(alloc: &A, rng: &mut Rng, n: usize) -> Vec<Block> {
    (0..n)
        .map(|i| {
            let layout = Layout::from_size_align(rng.size(), 8).unwrap();
            let zeroed = i % 7 == 0;
            // SAFETY: non-zero layout.
            let ptr = unsafe {
                if zeroed {
                    alloc.alloc_zeroed(layout)
                } else {
                    alloc.alloc(layout)
                }
            };
            assert!(!ptr.is_null());
            if zeroed {
                // SAFETY: live for `layout.size()` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "alloc_zeroed gave non-zero bytes"
                );
            }
            let seed = rng.next() as u8;
            fill(ptr, layout.size(), seed);
            Block { ptr, layout, seed }
        })
        .collect()
}

/// Grows or shrinks every other block, checking what survives the move.
fn reallocate<A: GlobalAlloc>(alloc: &A, rng: &mut Rng, blocks: &mut [Block]) {
    for block in blocks.iter_mut().step_by(2) {
        let new_size = rng.size();
        // SAFETY: the block is live at `layout`; a non-zero new size.
        let ptr = unsafe { alloc.realloc(block.ptr, block.layout, new_size) };
        assert!(!ptr.is_null());
        let kept = block.layout.size().min(new_size);
        check(ptr, kept, block.seed, "realloc");
        block.ptr = ptr;
        block.layout = Layout::from_size_align(new_size, 8).unwrap();
        fill(ptr, new_size, block.seed);
    }
}

fn free<A: GlobalAlloc>(alloc: &A, blocks: Vec<Block>) {
    for block in blocks {
        check(block.ptr, block.layout.size(), block.seed, "before free");
        // SAFETY: live at `layout`, freed once.
        unsafe { alloc.dealloc(block.ptr, block.layout) };
    }
}

fn counters_and_table() -> (u64, u64, u64) {
    let stats = heapwatch::stats();
    (
        stats.live_bytes,
        stats.live_objects,
        heapwatch::profiler_stats().live_samples,
    )
}

fn main() {
    let before = counters_and_table();
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    let mut rng = Rng(0x5eed);

    // 1. The default rate: every live sample promoted.
    let mut blocks = allocate(&ALLOC, &mut rng, 20_000);
    let samples = heapwatch::profiler_stats().live_samples;
    assert!(samples >= 20, "enough samples to mean something: {samples}");
    assert_eq!(
        heapwatch::__unaligned_live_samples(),
        0,
        "at 512 KiB every sample is promoted"
    );
    reallocate(&ALLOC, &mut rng, &mut blocks);
    assert_eq!(heapwatch::__unaligned_live_samples(), 0);

    // 2. Half freed on other threads, while this one takes unaligned samples at a fine rate
    //    (closing every free gate) and then frees them (reopening).
    let (to_workers, from_main) = mpsc::channel::<Vec<Block>>();
    let from_main = std::sync::Arc::new(std::sync::Mutex::new(from_main));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let from_main = from_main.clone();
            thread::spawn(move || loop {
                let batch = from_main.lock().unwrap().recv();
                match batch {
                    Ok(batch) => free(&ALLOC, batch),
                    Err(_) => return,
                }
            })
        })
        .collect();
    let keep = blocks.split_off(blocks.len() / 2);
    while !blocks.is_empty() {
        let batch = blocks.split_off(blocks.len().saturating_sub(500));
        to_workers.send(batch).unwrap();
    }
    drop(blocks);
    drop(from_main);
    heapwatch::set_sample_rate(1024);
    let fine = allocate(&ALLOC, &mut rng, 5_000);
    assert!(
        heapwatch::__unaligned_live_samples() > 0,
        "a 1 KiB rate takes samples without promotion"
    );
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    free(&ALLOC, fine);
    drop(to_workers);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(
        heapwatch::__unaligned_live_samples(),
        0,
        "every unaligned sample found at its free"
    );
    free(&ALLOC, keep);

    // 3. The system allocator (its aligned allocations take another path) under the same.
    let mut blocks = allocate(&OVER_SYSTEM, &mut rng, 5_000);
    reallocate(&OVER_SYSTEM, &mut rng, &mut blocks);
    free(&OVER_SYSTEM, blocks);

    assert_eq!(
        MISMATCHES.load(Ordering::Relaxed),
        0,
        "every block handed back to the inner allocator at the layout it was allocated at"
    );
    let promoted = PROMOTED.load(Ordering::Relaxed);
    assert!(
        promoted >= samples as usize,
        "promoted allocations: {promoted}"
    );
    let after = counters_and_table();
    assert_eq!(
        after, before,
        "live bytes, live blocks and live samples back to where they started"
    );
    println!(
        "promoted_samples: {samples} samples at 512 KiB, all at a 4 KiB boundary; {promoted} promoted \
         allocations, every block freed at its own layout; counters and table back to {before:?}"
    );
}
