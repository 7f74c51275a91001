//! `heapwatch timeline`: the series carried in a directory's dump summaries, and each dump's
//! time and reason, gathered for the library's chart (`heapwatch::encode::write_timeline`).

use heapwatch::encode::{TimelineMark, TimelinePoint};
use std::path::Path;

/// The chart of `dir`'s dump summaries, as SVG.
pub fn render(dir: &Path) -> Result<Vec<u8>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let sets = heapwatch::watch::list_sets(dir);
    if sets.is_empty() {
        return Err(format!("no dump sets in {}", dir.display()));
    }
    let mut points = Vec::new();
    let mut marks = Vec::new();
    for set in &sets {
        let summary = heapwatch::watch::read_summary(set)
            .map_err(|e| format!("{}: {e}", set.summary().display()))?;
        points.extend(summary.series.iter().map(|point| TimelinePoint {
            unix_ms: point.unix_ms,
            heap_bytes: Some(point.heap_live_bytes),
            working_set_bytes: point.working_set_bytes,
            limit_bytes: point.limit_bytes,
        }));
        marks.push(TimelineMark {
            unix_ms: summary.unix_ms,
            label: summary.reason.clone(),
            detail: summary.reason_detail.clone(),
        });
    }
    if points.is_empty() {
        return Err("the dump summaries carry no series".to_owned());
    }
    let title = format!(
        "heapwatch timeline: {} dump sets in {}",
        sets.len(),
        dir.display()
    );
    let mut svg = Vec::new();
    heapwatch::encode::write_timeline(&title, &points, &marks, &mut svg)
        .map_err(|e| e.to_string())?;
    Ok(svg)
}
