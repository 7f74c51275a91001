//! heapwatch's exact scope figures against dhat's and stats_alloc's counts of the same calls, in
//! one process whose global allocator layers all three:
//! `StatsAlloc<heapwatch::Alloc<dhat::Alloc>>`, so every allocation of a measured call passes
//! through each counter once.
//!
//! **Why a bypass in front of the stack.** dhat can only be innermost (`dhat::Alloc` calls
//! `System` itself and wraps nothing), and its bookkeeping (a backtrace per allocation, its
//! hash tables) allocates through the *global* allocator: dhat skips those calls with a
//! thread-local flag of its own, but the layers above it would count them as the workload's. So
//! a thin [`Layered`] front sends any call made while dhat is running (marked by [`DhatLayer`],
//! the innermost layer) straight to `dhat::Alloc`, which hands it to `System` uncounted, as dhat
//! intends. Everything else, including heap that heapwatch's sampler allocates through the
//! global allocator, passes through all three layers. Without the bypass stats_alloc and
//! heapwatch count dhat's backtraces too.
//!
//! **Why `harness = false`.** dhat's and stats_alloc's figures are process-wide, heapwatch's are
//! the calling thread's; libtest's threads would allocate beside the measured call. With one
//! thread the three count the same calls.
//!
//! **The mapping**, per call (Δ: after − before):
//!
//! | heapwatch `Allocations` | dhat `HeapStats` | stats_alloc `Stats` |
//! | --- | --- | --- |
//! | `blocks` | Δ`total_blocks` | `allocations + reallocations` |
//! | `bytes` | Δ`total_bytes` | — |
//! | `reallocs` | — | `reallocations` |
//! | `freed_blocks` | — | `deallocations + reallocations` |
//! | `freed_bytes` | Δ`total_bytes` − Δ`curr_bytes` | — |
//! | `held_blocks` | Δ`curr_blocks` | `allocations − deallocations` |
//! | `held_bytes` | Δ`curr_bytes` | `bytes_allocated − bytes_deallocated` |
//! | `peak_bytes` | `max_bytes` − `curr_bytes` before, when the call set a new `max_bytes` | — |
//!
//! A `realloc` is a free and an allocation for heapwatch and dhat, and apart from both for
//! stats_alloc; stats_alloc adds a `realloc`'s growth to `bytes_allocated` and its shrinkage to
//! `bytes_deallocated` (as well as the signed change to `bytes_reallocated`), so held bytes are
//! `bytes_allocated − bytes_deallocated` with no `bytes_reallocated` term, and heapwatch's
//! `freed_blocks` (a `realloc` frees its old block) are `deallocations + reallocations`. In
//! `vec_push` (8 reallocs, nothing freed otherwise) `deallocations` alone reads 0 against 8, and
//! adding `bytes_reallocated` to the held bytes would read 16352 against 8192.
//!
//! Three passes: sampling at heapwatch's default rate (what users run); sampling every
//! allocation (every sampled path, stack capture included, on every call); and 64 calls of each
//! workload at 128 KiB, the finest rate at which sampled blocks are promoted to a 4 KiB boundary,
//! so that promoted samples and reallocs of them happen (the live-sample table shows how many).
//! Every equation of every call is checked and printed; any mismatch fails the run after all
//! are reported. At promoting rates one difference is allowed and printed as a NOTE: heapwatch
//! serves a `realloc` whose new block is sampled as allocate, copy, free, so dhat (below it) sees
//! both blocks live at once and a peak higher by the old block than heapwatch's, which counts the
//! `realloc` the program asked for (see `checks`).
//!
//! One case differs by design: heap that heapwatch itself allocates through the global
//! allocator while sampling (the caching unwinder's cache and module list, built by the
//! process's first sampled stack) is held out of heapwatch's figures but counted by the other
//! two. The first measured call runs before anything was sampled, so that case is measured too
//! ([`first_sample`]): the peers must agree with each other, and heapwatch's figures must be the
//! call's own (those of the same call measured warm).

#[path = "common/five_workloads.rs"]
mod five_workloads;

use five_workloads::WORKLOADS;
use stats_alloc::{Region, StatsAlloc};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

thread_local! {
    /// Set while the thread is inside `dhat::Alloc` (or inside a dhat call of this test): what
    /// the global allocator receives then is dhat's own bookkeeping. A const-initialised `Cell`
    /// has no destructor, so reading it never allocates and never fails.
    static IN_DHAT: Cell<bool> = const { Cell::new(false) };
}

fn in_dhat() -> bool {
    IN_DHAT.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` marked as dhat's: its allocations bypass stats_alloc and heapwatch.
fn as_dhat<T>(f: impl FnOnce() -> T) -> T {
    let was = IN_DHAT.try_with(|flag| flag.replace(true)).unwrap_or(false);
    let out = f();
    let _ = IN_DHAT.try_with(|flag| flag.set(was));
    out
}

/// The innermost layer: `dhat::Alloc`, with the thread marked while dhat runs.
struct DhatLayer;

// SAFETY: every method forwards to `dhat::Alloc` with the caller's arguments unchanged, so the
// blocks and their contract are dhat's (which are `System`'s); the marking only sets a
// thread-local flag and restores it, and neither allocates nor unwinds.
unsafe impl GlobalAlloc for DhatLayer {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract; passed on unchanged.
        as_dhat(|| unsafe { dhat::Alloc.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract; `ptr` came from this layer, i.e. dhat.
        as_dhat(|| unsafe { dhat::Alloc.dealloc(ptr, layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; `ptr` came from this layer.
        as_dhat(|| unsafe { dhat::Alloc.realloc(ptr, layout, new_size) })
    }
}

/// The three counters stacked, behind a front that lets dhat's own calls bypass the two above
/// it (see the module doc).
struct Layered {
    counted: StatsAlloc<heapwatch::Alloc<DhatLayer>>,
}

// SAFETY: each call goes either through `counted` (stats_alloc → heapwatch → dhat → `System`)
// or, while dhat is running on this thread, straight to `dhat::Alloc`, which then hands it to
// `System` (its own flag is set too). A block is freed on the path it was allocated on: blocks
// dhat allocates while running are its own and it frees them while running, and dhat is started
// and stopped inside `as_dhat`; a user block never reaches the bypass. Both paths end at
// `System`, so even a block crossing over would be freed by the allocator that made it.
unsafe impl GlobalAlloc for Layered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_dhat() {
            // SAFETY: the caller upholds `alloc`'s contract; passed on unchanged.
            unsafe { dhat::Alloc.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { self.counted.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if in_dhat() {
            // SAFETY: the caller upholds `alloc_zeroed`'s contract; passed on unchanged.
            unsafe { dhat::Alloc.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { self.counted.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_dhat() {
            // SAFETY: the caller upholds `dealloc`'s contract; `ptr` is dhat's own block,
            // allocated on this same bypass (see the impl's comment).
            unsafe { dhat::Alloc.dealloc(ptr, layout) }
        } else {
            // SAFETY: the caller upholds `dealloc`'s contract; `ptr` was allocated through
            // `counted` (see the impl's comment).
            unsafe { self.counted.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_dhat() {
            // SAFETY: as for `dealloc`, with `realloc`'s contract.
            unsafe { dhat::Alloc.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: as for `dealloc`, with `realloc`'s contract.
            unsafe { self.counted.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static GLOBAL: Layered = Layered {
    // Both constructors are `const fn` (stats_alloc's through its `nightly` feature, see
    // Cargo.toml), so the stack is built at compile time.
    counted: StatsAlloc::new(heapwatch::Alloc::new(DhatLayer)),
};

/// One measured call, as each counter saw it.
struct Counted {
    name: &'static str,
    heapwatch: heapwatch::Allocations,
    dhat_before: dhat::HeapStats,
    dhat_after: dhat::HeapStats,
    stats: stats_alloc::Stats,
}

fn dhat_stats() -> dhat::HeapStats {
    as_dhat(dhat::HeapStats::get)
}

/// Measures one call of `run` with the three counters at once, the innermost scope being
/// heapwatch's so that neither other counter's reading falls inside another's window (none of
/// the readings allocates, but the order keeps that from mattering).
fn count(name: &'static str, run: fn() -> five_workloads::Built) -> Counted {
    let (counted, built) = count_keeping(name, run);
    drop(built);
    counted
}

/// [`count`], handing back what the call built (dropped by the caller, outside the readings).
fn count_keeping(
    name: &'static str,
    run: fn() -> five_workloads::Built,
) -> (Counted, five_workloads::Built) {
    let dhat_before = dhat_stats();
    let region = Region::new(&GLOBAL.counted);
    let (built, heapwatch) = heapwatch::measure(run);
    let stats = region.change();
    let dhat_after = dhat_stats();
    let counted = Counted {
        name,
        heapwatch,
        dhat_before,
        dhat_after,
        stats,
    };
    (counted, built)
}

/// One equation of the mapping: heapwatch's side, the peer's side.
struct Check {
    what: &'static str,
    heapwatch: i128,
    peer: i128,
    holds: bool,
    /// Printed when the check holds with the sides unequal (an allowed, explained difference).
    unequal_note: Option<&'static str>,
}

fn equal(what: &'static str, heapwatch: impl Into<i128>, peer: impl Into<i128>) -> Check {
    let (heapwatch, peer) = (heapwatch.into(), peer.into());
    Check {
        what,
        heapwatch,
        peer,
        holds: heapwatch == peer,
        unequal_note: None,
    }
}

/// The equations of one call. `promoting`: heapwatch samples at a rate that promotes sampled
/// blocks to a 4 KiB boundary, so a `realloc` whose new block is sampled is served below
/// heapwatch as allocate, copy, free: for that instant both blocks are live in dhat's view
/// (dhat sits below heapwatch), not in heapwatch's (the program asked for one `realloc`), and
/// dhat's peak can exceed heapwatch's by the old block's size. Then the peak may be lower than
/// dhat's in a call that reallocates, never higher.
fn checks(c: &Counted, promoting: bool) -> Vec<Check> {
    let hw = &c.heapwatch;
    let (d0, d1) = (&c.dhat_before, &c.dhat_after);
    let st = &c.stats;
    let i = |n: usize| n as i128;
    let dhat_total_blocks = i128::from(d1.total_blocks) - i128::from(d0.total_blocks);
    let dhat_total_bytes = i128::from(d1.total_bytes) - i128::from(d0.total_bytes);
    let dhat_curr_blocks = i(d1.curr_blocks) - i(d0.curr_blocks);
    let dhat_curr_bytes = i(d1.curr_bytes) - i(d0.curr_bytes);
    let mut list = vec![
        equal("blocks == dhat Δtotal_blocks", hw.blocks, dhat_total_blocks),
        equal(
            "blocks == stats allocations + reallocations",
            hw.blocks,
            i(st.allocations) + i(st.reallocations),
        ),
        equal("bytes == dhat Δtotal_bytes", hw.bytes, dhat_total_bytes),
        equal(
            "reallocs == stats reallocations",
            hw.reallocs,
            i(st.reallocations),
        ),
        equal(
            "freed_blocks == stats deallocations + reallocations",
            hw.freed_blocks,
            i(st.deallocations) + i(st.reallocations),
        ),
        equal(
            "freed_bytes == dhat Δtotal_bytes - Δcurr_bytes",
            hw.freed_bytes,
            dhat_total_bytes - dhat_curr_bytes,
        ),
        equal(
            "held_blocks == dhat Δcurr_blocks",
            hw.held_blocks,
            dhat_curr_blocks,
        ),
        equal(
            "held_blocks == stats allocations - deallocations",
            hw.held_blocks,
            i(st.allocations) - i(st.deallocations),
        ),
        equal(
            "held_bytes == dhat Δcurr_bytes",
            hw.held_bytes,
            dhat_curr_bytes,
        ),
        equal(
            "held_bytes == stats bytes_allocated - bytes_deallocated",
            hw.held_bytes,
            i(st.bytes_allocated) - i(st.bytes_deallocated),
        ),
    ];
    // dhat keeps one process-wide maximum: it tells the call's peak only if the call raised it.
    if d1.max_bytes > d0.max_bytes {
        let mut peak = equal(
            "peak_bytes == dhat max_bytes after - curr_bytes before",
            hw.peak_bytes,
            i(d1.max_bytes) - i(d0.curr_bytes),
        );
        if promoting && hw.reallocs > 0 && peak.heapwatch < peak.peer {
            peak.holds = true;
            peak.unequal_note = Some(
                "lower than dhat's: a realloc served as allocate+copy+free below heapwatch \
                 to promote a sample held both blocks at once",
            );
        }
        list.push(peak);
    } else {
        let bound = i(d0.max_bytes) - i(d0.curr_bytes);
        list.push(Check {
            what: "peak_bytes <= dhat max_bytes - curr_bytes before (max not raised)",
            heapwatch: i128::from(hw.peak_bytes),
            peer: bound,
            holds: i128::from(hw.peak_bytes) <= bound,
            unequal_note: None,
        });
    }
    list
}

/// Counts every workload once and prints the three readings side by side; returns how many
/// workloads had an equation fail (each printed), and the readings.
fn pass(title: &str, promoting: bool) -> (usize, Vec<Counted>) {
    let counted: Vec<Counted> = WORKLOADS.iter().map(|w| count(w.name, w.run)).collect();
    println!("\n## {title}\n");
    println!(
        "| function | hw blocks | hw bytes | hw reallocs | hw freed blocks | hw freed bytes | hw held blocks | hw held bytes | hw peak | dhat Δtotal_blocks | dhat Δtotal_bytes | dhat Δcurr_blocks | dhat Δcurr_bytes | dhat max raised | stats allocations | stats reallocations | stats deallocations | stats bytes_allocated | stats bytes_deallocated | stats bytes_reallocated |"
    );
    println!("|{}", " --- |".repeat(21));
    for c in &counted {
        let (hw, d0, d1, st) = (&c.heapwatch, &c.dhat_before, &c.dhat_after, &c.stats);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            hw.blocks,
            hw.bytes,
            hw.reallocs,
            hw.freed_blocks,
            hw.freed_bytes,
            hw.held_blocks,
            hw.held_bytes,
            hw.peak_bytes,
            d1.total_blocks - d0.total_blocks,
            d1.total_bytes - d0.total_bytes,
            d1.curr_blocks as i64 - d0.curr_blocks as i64,
            d1.curr_bytes as i64 - d0.curr_bytes as i64,
            if d1.max_bytes > d0.max_bytes { "yes" } else { "no" },
            st.allocations,
            st.reallocations,
            st.deallocations,
            st.bytes_allocated,
            st.bytes_deallocated,
            st.bytes_reallocated,
        );
    }
    let failed = counted
        .iter()
        .map(|c| report(c.name, &checks(c, promoting)))
        .sum();
    (failed, counted)
}

/// Calls of each workload per workload in [`promoted_pass`]: at 128 KiB a call of 10–16 KiB is
/// sampled about one time in ten, so 64 calls take several samples of every workload that
/// allocates that much.
const PROMOTED_CALLS: usize = 64;

/// Sampling at heapwatch's finest promoting rate, where a sampled block is allocated at a 4 KiB
/// boundary and a `realloc` of a sampled or to-be-sampled block becomes an allocation, a copy
/// and a free underneath: [`PROMOTED_CALLS`] calls of each workload, every equation of every
/// call checked. What the calls built is kept until all of a workload's calls are counted, so
/// the live-sample table shows how many of its blocks were sampled (and dhat's maximum rises
/// with most calls, checking the peak exactly). Returns the calls with an equation failed.
fn promoted_pass(rate_bytes: u64) -> usize {
    heapwatch::set_sample_rate(rate_bytes);
    println!(
        "\n## heapwatch sampling at {rate_bytes} bytes (promoted samples), {PROMOTED_CALLS} calls of each\n"
    );
    let mut failed = 0;
    for workload in &WORKLOADS {
        let mut kept = Vec::with_capacity(PROMOTED_CALLS);
        let samples_before = heapwatch::profiler_stats().live_samples;
        let mut bad_calls = 0;
        let mut peaks_checked_exactly = 0;
        for call in 0..PROMOTED_CALLS {
            let (counted, built) = count_keeping(workload.name, workload.run);
            kept.push(built);
            let dhat_peak = counted.dhat_after.max_bytes as u64
                - counted
                    .dhat_before
                    .curr_bytes
                    .min(counted.dhat_after.max_bytes) as u64;
            if counted.dhat_after.max_bytes > counted.dhat_before.max_bytes
                && counted.heapwatch.peak_bytes == dhat_peak
            {
                peaks_checked_exactly += 1;
            }
            let list = checks(&counted, true);
            let noted = list
                .iter()
                .any(|check| check.unequal_note.is_some() && check.heapwatch != check.peer);
            if noted || list.iter().any(|check| !check.holds) {
                print!("call {call}: ");
                bad_calls += report(workload.name, &list);
            }
        }
        let sampled = heapwatch::profiler_stats()
            .live_samples
            .saturating_sub(samples_before);
        println!(
            "{}: {} of {PROMOTED_CALLS} calls agree on every equation ({peaks_checked_exactly} peaks equal to dhat's exactly); {sampled} sampled blocks among what they built",
            workload.name,
            PROMOTED_CALLS - bad_calls
        );
        drop(kept);
        failed += bad_calls;
    }
    failed
}

/// The process's first sampled stack, inside a measured call: heapwatch's caching unwinder
/// builds its cache and module list through the global allocator, and heapwatch holds that heap
/// out of its figures by design (see `heapwatch::Allocations`), so here dhat and stats_alloc see
/// more than heapwatch. Checked: the two peers agree with each other, and heapwatch's figures
/// for the cold call are the very figures of the same call once the unwinder is warm
/// (`warm`, from the every-allocation pass), peak included. Returns the checks that failed.
fn first_sample(cold: &Counted, warm: &Counted) -> usize {
    let (hw, d0, d1, st) = (
        &cold.heapwatch,
        &cold.dhat_before,
        &cold.dhat_after,
        &cold.stats,
    );
    let own = &warm.heapwatch;
    let dhat_blocks = i128::from(d1.total_blocks - d0.total_blocks);
    let dhat_bytes = i128::from(d1.total_bytes - d0.total_bytes);
    println!(
        "\n## {}: the first sampled stack of the process, unwinder cold (rate 1 byte)\n",
        cold.name
    );
    println!("heapwatch (cold): {hw}");
    println!("heapwatch (warm): {own}");
    println!(
        "dhat: Δtotal_blocks {dhat_blocks}, Δtotal_bytes {dhat_bytes}, Δcurr_bytes {}, max_bytes {} -> {} (curr before {}); stats_alloc: {:?}",
        d1.curr_bytes as i64 - d0.curr_bytes as i64,
        d0.max_bytes,
        d1.max_bytes,
        d0.curr_bytes,
        st
    );
    println!(
        "held out by heapwatch (dhat - heapwatch): {} blocks, {} bytes",
        dhat_blocks - i128::from(hw.blocks),
        dhat_bytes - i128::from(hw.bytes)
    );
    let list = [
        equal(
            "dhat Δtotal_blocks == stats allocations + reallocations",
            dhat_blocks,
            st.allocations as i128 + st.reallocations as i128,
        ),
        equal(
            "dhat Δcurr_bytes == stats bytes_allocated - bytes_deallocated",
            d1.curr_bytes as i128 - d0.curr_bytes as i128,
            st.bytes_allocated as i128 - st.bytes_deallocated as i128,
        ),
        // Only with the caching unwinder (feature `cached-unwinder` on x86_64 glibc) does the
        // first sample allocate through the global allocator; either way heapwatch never counts
        // more than the peers.
        Check {
            what: "heapwatch bytes <= dhat Δtotal_bytes",
            heapwatch: i128::from(hw.bytes),
            peer: dhat_bytes,
            holds: i128::from(hw.bytes) <= dhat_bytes,
            unequal_note: None,
        },
        equal("cold blocks == warm blocks", hw.blocks, own.blocks),
        equal("cold bytes == warm bytes", hw.bytes, own.bytes),
        equal("cold reallocs == warm reallocs", hw.reallocs, own.reallocs),
        equal(
            "cold freed_bytes == warm freed_bytes",
            hw.freed_bytes,
            own.freed_bytes,
        ),
        equal(
            "cold held_bytes == warm held_bytes",
            hw.held_bytes,
            own.held_bytes,
        ),
        equal(
            "cold peak_bytes == warm peak_bytes",
            hw.peak_bytes,
            own.peak_bytes,
        ),
    ];
    report(cold.name, &list)
}

/// Prints how many of `list` hold and each that does not; 1 if any failed, else 0.
fn report(name: &str, list: &[Check]) -> usize {
    let bad: Vec<&Check> = list.iter().filter(|check| !check.holds).collect();
    println!(
        "{name}: {} of {} equations hold",
        list.len() - bad.len(),
        list.len()
    );
    for check in &bad {
        println!(
            "  MISMATCH {}: heapwatch {} vs peer {} (difference {})",
            check.what,
            check.heapwatch,
            check.peer,
            check.heapwatch - check.peer
        );
    }
    for check in list {
        if let (true, Some(note)) = (
            check.holds && check.heapwatch != check.peer,
            check.unequal_note,
        ) {
            println!(
                "  NOTE {}: heapwatch {} vs peer {} (difference {}), {note}",
                check.what,
                check.heapwatch,
                check.peer,
                check.heapwatch - check.peer
            );
        }
    }
    usize::from(!bad.is_empty())
}

fn main() {
    // Started (and stopped) as dhat's own: the profiler's tables are dhat's bookkeeping.
    let profiler = as_dhat(|| dhat::Profiler::builder().testing().build());
    // Reproducible sampling decisions: the same calls are sampled on every run.
    heapwatch::reseed_sampler(0x15);

    // First, before anything is sampled: the unwinder is cold.
    heapwatch::set_sample_rate(1);
    let first = &WORKLOADS[0];
    let cold = count(first.name, first.run);

    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    let (mut failed, _) = pass(
        &format!(
            "heapwatch sampling at its default rate ({} bytes)",
            heapwatch::DEFAULT_SAMPLE_RATE_BYTES
        ),
        true,
    );
    heapwatch::set_sample_rate(1);
    let (failed_every, warm) = pass("heapwatch sampling every allocation (rate 1 byte)", false);
    failed += failed_every;
    let promoting_rate = 128 * 1024;
    let failed_promoted = promoted_pass(promoting_rate);
    failed += failed_promoted;
    heapwatch::set_sample_rate(heapwatch::DEFAULT_SAMPLE_RATE_BYTES);
    failed += first_sample(&cold, &warm[0]);

    as_dhat(|| drop(profiler));
    // Each pass's workloads, each promoted call, and the first-sample case.
    let total = 2 * WORKLOADS.len() + WORKLOADS.len() * PROMOTED_CALLS + 1;
    println!("\n{} passed, {} failed", total - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
