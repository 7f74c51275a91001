//! A scope's figures: what the calling thread allocated, freed and held between two points,
//! from its counter block (see the module docs of [`measure`](super)).

use crate::thread_state::{self, ScopeStart, ThreadFigures};

/// What the calling thread allocated and freed within a scope. Exact: every allocation counts.
///
/// A `realloc` counts as a free of the old block, an allocation of the new one and one
/// `realloc` (as DHAT counts it; `stats_alloc` counts it apart from allocations). Heap that
/// heapwatch keeps for itself (an unwinder's caches built by a sample inside the scope) is
/// not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Blocks allocated (by `alloc`, `alloc_zeroed` and `realloc`).
    pub blocks: u64,
    /// Bytes allocated, as requested.
    pub bytes: u64,
    /// Blocks freed (by `dealloc` and `realloc`), whoever allocated them.
    pub freed_blocks: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// `realloc` calls.
    pub reallocs: u64,
    /// The highest the thread's live bytes rose above their level at the scope's start.
    pub peak_bytes: u64,
    /// Bytes allocated minus bytes freed at the scope's end: what it left held (negative when
    /// it freed more than it allocated).
    pub held_bytes: i64,
    /// Blocks allocated minus blocks freed at the scope's end.
    pub held_blocks: i64,
}

impl Allocations {
    fn between(start: &ThreadFigures, end: &ThreadFigures) -> Allocations {
        let (t0, t1) = (&start.totals, &end.totals);
        let held = (
            end.held_for_profiler
                .0
                .wrapping_sub(start.held_for_profiler.0),
            end.held_for_profiler
                .1
                .wrapping_sub(start.held_for_profiler.1),
        );
        let blocks = t1.allocated_objects.wrapping_sub(t0.allocated_objects);
        let bytes = t1.allocated_bytes.wrapping_sub(t0.allocated_bytes);
        let freed_blocks = t1.freed_objects.wrapping_sub(t0.freed_objects);
        let freed_bytes = t1.freed_bytes.wrapping_sub(t0.freed_bytes);
        let blocks = (blocks as i64).wrapping_sub(held.1).max(0) as u64;
        let bytes = (bytes as i64).wrapping_sub(held.0).max(0) as u64;
        Allocations {
            blocks,
            bytes,
            freed_blocks,
            freed_bytes,
            reallocs: t1.reallocs.wrapping_sub(t0.reallocs),
            peak_bytes: end.peak_net.wrapping_sub(start.net_bytes()).max(0) as u64,
            held_bytes: (bytes as i64).wrapping_sub(freed_bytes as i64),
            held_blocks: (blocks as i64).wrapping_sub(freed_blocks as i64),
        }
    }
}

impl std::fmt::Display for Allocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks, {} bytes allocated ({} by realloc); {} blocks, {} bytes freed; peak {} bytes; {} bytes held",
            self.blocks,
            self.bytes,
            self.reallocs,
            self.freed_blocks,
            self.freed_bytes,
            self.peak_bytes,
            self.held_bytes
        )
    }
}

/// Runs `f` and returns its result with what the calling thread allocated meanwhile.
///
/// ```
/// #[global_allocator]
/// static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
///
/// let (_, grown) = heapwatch::measure(|| {
///     let mut v = Vec::new();
///     for i in 0..100u32 {
///         v.push(i); // grows by doubling: 4, 8, …, 128 elements
///     }
/// });
/// assert_eq!(grown.blocks, 6);
/// assert_eq!(grown.reallocs, 5);
/// assert_eq!(grown.held_bytes, 0); // dropped inside the scope
/// assert_eq!(grown.peak_bytes, 128 * 4);
/// ```
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Allocations) {
    let scope = AllocationScope::begin();
    let out = f();
    (out, scope.end())
}

/// A measuring scope as a guard: what the calling thread allocated from [`begin`](Self::begin)
/// to [`end`](Self::end) (or to each [`so_far`](Self::so_far)), as [`measure`] reports it.
/// Scopes nest; close them innermost first (dropping closes one). Not `Send`: it measures the
/// thread it was opened on.
///
/// ```
/// #[global_allocator]
/// static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);
///
/// let scope = heapwatch::AllocationScope::begin();
/// let kept = String::from("kept");
/// assert_eq!(scope.so_far().held_bytes, 4);
/// assert_eq!(scope.end().blocks, 1);
/// # drop(kept);
/// ```
#[derive(Debug)]
pub struct AllocationScope {
    /// `None` on a thread that can have no counters (exiting): every figure reads zero.
    start: Option<ScopeStart>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl AllocationScope {
    /// Opens a scope on the calling thread.
    pub fn begin() -> AllocationScope {
        AllocationScope {
            start: thread_state::open_scope(),
            _not_send: std::marker::PhantomData,
        }
    }

    /// What the thread allocated since the scope began (the scope stays open).
    pub fn so_far(&self) -> Allocations {
        match &self.start {
            Some(start) => Allocations::between(&start.figures, &thread_state::figures()),
            None => Allocations::default(),
        }
    }

    /// Closes the scope and returns what the thread allocated within it.
    pub fn end(self) -> Allocations {
        self.so_far()
        // Dropped here: the scope closes.
    }
}

impl Drop for AllocationScope {
    fn drop(&mut self) {
        if let Some(start) = &self.start {
            thread_state::close_scope(start);
        }
    }
}

/// The calling thread's allocation totals, read without opening a scope (the fast path stays
/// as it is): what benchmark measurements read around a batch of iterations.
#[cfg_attr(not(feature = "criterion"), allow(dead_code))]
pub(crate) fn allocated_so_far() -> (u64, u64) {
    let figures = thread_state::figures();
    let (bytes, blocks) = figures.held_for_profiler;
    (
        (figures.totals.allocated_bytes as i64).wrapping_sub(bytes) as u64,
        (figures.totals.allocated_objects as i64).wrapping_sub(blocks) as u64,
    )
}
