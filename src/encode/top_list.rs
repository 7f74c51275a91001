//! Text top lists: a profile's top call sites as a short table, for people reading a terminal
//! or a log, and the byte counts they print.

use crate::profile::{FunctionTotal, Profile, SampleType};
use std::io::{self, Write};

/// Formats a byte count with a binary unit (`64.0 MiB`).
///
/// ```
/// assert_eq!(heapwatch::encode::human_bytes(64 << 20), "64.0 MiB");
/// assert_eq!(heapwatch::encode::human_bytes(512), "512 B");
/// ```
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.unsigned_abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Writes the `limit` functions holding the most live memory (flat `inuse_space`), with their
/// object counts and allocation totals.
pub fn write_top_text<W: Write>(profile: &Profile, limit: usize, mut writer: W) -> io::Result<()> {
    // Culprits: the program's functions, past the libraries that allocate for them.
    let plumbing = crate::plumbing::plumbing();
    let space = profile.culprits(SampleType::InuseSpace, &plumbing);
    let objects = profile.culprits(SampleType::InuseObjects, &plumbing);
    let allocated = profile.culprits(SampleType::AllocSpace, &plumbing);
    let total = profile.total(SampleType::InuseSpace);
    writeln!(
        writer,
        "heapwatch heap profile: {} live (estimated from samples every {} on average)",
        human_bytes(total),
        human_bytes(profile.sample_rate_bytes as i64)
    )?;
    writeln!(
        writer,
        "{:>12} {:>6} {:>12} {:>14}  function",
        "inuse", "%", "objects", "allocated"
    )?;
    for site in space.iter().filter(|s| s.flat > 0).take(limit) {
        let find = |list: &[FunctionTotal]| {
            list.iter()
                .find(|t| t.function == site.function)
                .map_or(0, |t| t.flat)
        };
        let share = if total > 0 {
            100.0 * site.flat as f64 / total as f64
        } else {
            0.0
        };
        writeln!(
            writer,
            "{:>12} {:>5.1}% {:>12} {:>14}  {}",
            human_bytes(site.flat),
            share,
            find(&objects),
            human_bytes(find(&allocated)),
            site.function
        )?;
    }
    writer.flush()
}
