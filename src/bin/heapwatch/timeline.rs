//! `heapwatch timeline`: the series carried in a directory's dump summaries, drawn as an SVG
//! chart — live heap, working set and limit over time, each dump marked with its reason.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// A line of the chart: its name, colour, and the figure it draws.
type Line = (&'static str, &'static str, fn(&Row) -> Option<u64>);

#[derive(Default, Clone, Copy)]
struct Row {
    heap: Option<u64>,
    working_set: Option<u64>,
    limit: Option<u64>,
}

/// The chart of `dir`'s dump summaries.
pub fn render(dir: &Path) -> Result<String, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let sets = heapwatch::watch::list_sets(dir);
    if sets.is_empty() {
        return Err(format!("no dump sets in {}", dir.display()));
    }
    let mut series: BTreeMap<u64, Row> = BTreeMap::new();
    let mut dumps = Vec::new();
    for set in &sets {
        let summary = heapwatch::watch::read_summary(set)
            .map_err(|e| format!("{}: {e}", set.summary().display()))?;
        for point in &summary.series {
            series.insert(
                point.unix_ms,
                Row {
                    heap: Some(point.heap_live_bytes),
                    working_set: point.working_set_bytes,
                    limit: point.limit_bytes,
                },
            );
        }
        dumps.push((
            summary.unix_ms,
            summary.reason_detail.clone(),
            summary.reason.clone(),
        ));
    }
    if series.is_empty() {
        return Err("the dump summaries carry no series".to_owned());
    }
    let (t0, t1) = (
        *series.keys().next().expect("non-empty"),
        *series.keys().next_back().expect("non-empty"),
    );
    let t0 = t0.min(dumps.iter().map(|d| d.0).min().unwrap_or(t0));
    let t1 = t1
        .max(dumps.iter().map(|d| d.0).max().unwrap_or(t1))
        .max(t0 + 1);
    let y_max = series
        .values()
        .flat_map(|r| [r.heap, r.working_set, r.limit])
        .flatten()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.08;
    let x = |t: u64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (WIDTH - LEFT - RIGHT);
    let y = |v: u64| TOP + (1.0 - v as f64 / y_max) * (HEIGHT - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Verdana, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">heapwatch timeline: {} dump sets in {}</text>
"#,
        WIDTH / 2.0,
        sets.len(),
        xml(&dir.display().to_string())
    );
    // Axes and horizontal grid in MiB.
    for i in 0..=5 {
        let value = (y_max / 1.08 * i as f64 / 5.0) as u64;
        let yy = y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{} MiB</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            value >> 20
        );
    }
    for i in 0..=4 {
        let t = t0 + (t1 - t0) * i / 4;
        let label = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(t),
        )
        .to_string();
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            HEIGHT - BOTTOM + 18.0,
            label.get(11..19).unwrap_or(&label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">time (UTC)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 36.0
    );
    let lines: [Line; 3] = [
        ("limit", "#d62728", |r| r.limit),
        ("working set", "#1f77b4", |r| r.working_set),
        ("live heap", "#2ca02c", |r| r.heap),
    ];
    for (i, (name, colour, value)) in lines.iter().enumerate() {
        let points: Vec<String> = series
            .iter()
            .filter_map(|(t, r)| Some(format!("{:.1},{:.1}", x(*t), y(value(r)?))))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
        let lx = LEFT + 10.0 + 130.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="40" y2="40" stroke="{colour}" stroke-width="3"/><text x="{}" y="44">{name}</text>"#,
            lx + 20.0,
            lx + 25.0
        );
    }
    for (i, (t, detail, reason)) in dumps.iter().enumerate() {
        let xx = x(*t);
        let label_y = TOP + 14.0 + 14.0 * (i % 4) as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#9467bd" stroke-dasharray="4 3"/><text x="{:.1}" y="{label_y:.1}" fill="#9467bd" text-anchor="end"><title>{}</title>{}</text>"##,
            HEIGHT - BOTTOM,
            xx - 3.0,
            xml(detail),
            xml(reason)
        );
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
