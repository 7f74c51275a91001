//! The process's own memory: its resident set, and the allocator's resident bytes (what
//! fragmentation shows in, while the heap stays flat).

/// Resident memory of the allocator: jemalloc's `stats.resident` when jemalloc is the inner
/// allocator (it holds at least half the heap), the process's RSS otherwise.
pub(crate) fn resident_bytes() -> Option<u64> {
    #[cfg(feature = "jemalloc")]
    if let Some(stats) = crate::jemalloc_stats::jemalloc_stats() {
        let heap = crate::counters::stats().live_bytes;
        if heap > 0 && stats.allocated * 2 >= heap {
            return Some(stats.resident);
        }
    }
    process_rss()
}

/// The process's resident set size, from `/proc/self/statm`.
pub(crate) fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
