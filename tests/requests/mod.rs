//! The request handlers the leak-check tests run: one that keeps what it allocates, one that
//! only reuses and frees, and the assertion that a report blames the first.

use heapwatch::leak_check::GrowthReport;
use std::hint::black_box;

/// Keeps 2 KiB per call: the leak a check must catch and name.
#[inline(never)]
pub fn remember_request(log: &mut Vec<Vec<u8>>, id: usize) {
    log.push(vec![id as u8; 2048]);
}

/// Allocates (a reused buffer, short-lived strings) but keeps nothing: a check must pass it.
#[inline(never)]
pub fn handle_request(scratch: &mut Vec<u8>, id: usize) -> usize {
    scratch.clear();
    scratch.extend(std::iter::repeat_n(id as u8, 4096));
    let temporary: Vec<String> = (0..16).map(|i| format!("{id}-{i}")).collect();
    black_box(temporary.len() + scratch.len())
}

/// The report's first growing site is [`remember_request`].
pub fn assert_blames_remember_request(report: &GrowthReport) {
    let top = &report
        .growing_sites
        .first()
        .unwrap_or_else(|| panic!("no growing site: {report}"))
        .function;
    assert!(
        top.contains("remember_request"),
        "top growing site {top}: {report}"
    );
}
