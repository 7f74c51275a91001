//! A large report, rendered per request and dropped once sent.

use std::fmt::Write;

/// Renders about `bytes` of CSV.
pub fn render_report(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes);
    let mut row = 0u64;
    while out.len() + 64 < bytes {
        let _ = writeln!(
            out,
            "{row},{},{}",
            row.wrapping_mul(2654435761) % 10_000,
            row % 97
        );
        row += 1;
    }
    out
}
