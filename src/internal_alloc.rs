//! The profiler's own memory: every structure heapwatch keeps (the live-sample table, interned
//! stacks, the symbol cache, per-thread counter blocks) is allocated here, straight from the C
//! library's `malloc` through [`std::alloc::System`], never through the global allocator.
//!
//! Why: the global allocator *is* heapwatch, so allocating the profiler's tables through it
//! would recurse into sampling while the table lock is held. Keeping them apart also means the
//! user's heap counters and profiles show only the user's memory, and the profiler's own cost is
//! measured exactly ([`profiler_bytes`]) instead of guessed.
//!
//! The symbolizer's heap figure is published here too ([`symbolizer_heap_bytes`]): this module
//! sits below both the symbolizer, which measures it, and the table, which reports it.

use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes currently held by heapwatch's own structures.
static PROFILER_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of heap currently held by heapwatch itself (tables, stacks, symbol cache), outside the
/// user's heap counters. It grows with the number of live samples and distinct stacks, not with
/// the size of the heap.
///
/// ```
/// let own = heapwatch::profiler_bytes();
/// assert!(own < 1 << 30);
/// ```
pub fn profiler_bytes() -> usize {
    PROFILER_BYTES.load(Ordering::Relaxed)
}

/// The symbolizer's heap (symbol indexes, names, address cache, parsed DWARF) as of the end of
/// its last naming. Published here by the symbolizer, below everything that reports it, so
/// that the figures of [`profiler_stats`](crate::table::profiler_stats) are read without the
/// symbolizer's lock and without the table knowing the symbolizer.
static SYMBOLIZER_HEAP_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Publishes the symbolizer's heap figure (see [`symbolizer_heap_bytes`]).
pub(crate) fn set_symbolizer_heap_bytes(bytes: usize) {
    SYMBOLIZER_HEAP_BYTES.store(bytes, Ordering::Relaxed);
}

/// Heap bytes held by the symbolizer as of the end of its last naming: read without its lock,
/// so that a metrics scrape never waits out a DWARF load.
pub(crate) fn symbolizer_heap_bytes() -> usize {
    SYMBOLIZER_HEAP_BYTES.load(Ordering::Relaxed)
}

/// The allocator for heapwatch's own collections (`allocator_api2` containers).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProfilerAlloc;

// SAFETY: every block comes from `System`, which upholds the `GlobalAlloc` contract; blocks are
// returned to `System` with the layout they were allocated with (the `Allocator` contract
// guarantees callers pass it back), and `ProfilerAlloc` is a stateless ZST, so clones are
// interchangeable.
unsafe impl Allocator for ProfilerAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            // A dangling, well-aligned pointer is the documented answer for zero-sized blocks.
            let dangling = layout.align() as *mut u8;
            // SAFETY: `align` is a non-zero power of two, so the pointer is non-null.
            let ptr = unsafe { NonNull::new_unchecked(dangling) };
            return Ok(NonNull::slice_from_raw_parts(ptr, 0));
        }
        // SAFETY: the layout has a non-zero size, as `GlobalAlloc::alloc` requires.
        let raw = unsafe { System.alloc(layout) };
        let ptr = NonNull::new(raw).ok_or(AllocError)?;
        PROFILER_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        PROFILER_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` came from `allocate` with this layout, and every
        // non-empty block from `allocate` came from `System.alloc` with the same layout.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }
}

/// Allocates one `T` with [`ProfilerAlloc`] and leaks it: for structures that live as long as
/// the process (counter blocks), so that no global allocation is needed to create them.
pub(crate) fn leak<T>(value: T) -> Option<&'static T> {
    let layout = Layout::new::<T>();
    let block = ProfilerAlloc.allocate(layout).ok()?;
    let ptr = block.cast::<T>().as_ptr();
    // SAFETY: `ptr` is a fresh, suitably aligned allocation of `size_of::<T>()` bytes that is
    // never freed, so writing `value` and handing out a `'static` reference are sound.
    unsafe {
        ptr.write(value);
        Some(&*ptr)
    }
}
