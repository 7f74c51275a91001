//! jemalloc's own statistics, when heapwatch wraps jemalloc (feature `jemalloc`): what the
//! allocator holds beyond the live heap — the figures that tell fragmentation from a leak.

/// jemalloc's statistics, in bytes (`stats.*` mallctls, refreshed by an epoch advance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JemallocStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in active pages (allocated plus the unused parts of those pages).
    pub active: u64,
    /// Bytes in physically resident pages jemalloc maps.
    pub resident: u64,
    /// Bytes retained: returned to the OS in use, but kept mapped for reuse.
    pub retained: u64,
    /// Bytes of jemalloc's own metadata.
    pub metadata: u64,
    /// Bytes in mapped chunks.
    pub mapped: u64,
}

/// Reads jemalloc's statistics now; `None` if jemalloc cannot report them.
///
/// ```
/// if let Some(stats) = heapwatch::jemalloc_stats() {
///     assert!(stats.resident >= stats.active);
/// }
/// ```
pub fn jemalloc_stats() -> Option<JemallocStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(JemallocStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        mapped: stats::mapped::read().ok()? as u64,
    })
}
