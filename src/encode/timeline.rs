//! The timeline chart: live heap, working set and limit over time as an SVG line chart, each
//! dump marked with its reason (what `heapwatch timeline` draws from a directory's dump
//! summaries).

use super::svg::xml_escape;
use std::io::{self, Write};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// One moment of the series: what was known of the heap and the cgroup then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimelinePoint {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Live heap bytes.
    pub heap_bytes: Option<u64>,
    /// The cgroup's working set, bytes.
    pub working_set_bytes: Option<u64>,
    /// The cgroup's memory limit, bytes.
    pub limit_bytes: Option<u64>,
}

/// A dump, drawn as a dashed vertical line labelled with its reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineMark {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The short label beside the line (the dump's reason).
    pub label: String,
    /// The longer text shown on hover (the reason's detail).
    pub detail: String,
}

/// A line of the chart: its name, colour, and the figure it draws.
type Line = (
    &'static str,
    &'static str,
    fn(&TimelinePoint) -> Option<u64>,
);

/// Writes the chart of `points` with `marks` under `title`. Points may come in any order and
/// overlap (the dump summaries of one run carry overlapping windows of one series): they are
/// drawn in time order, and of two points at one time the later in `points` is drawn.
///
/// ```
/// use heapwatch::encode::{write_timeline, TimelineMark, TimelinePoint};
/// let points = [0, 1000].map(|unix_ms| TimelinePoint {
///     unix_ms,
///     heap_bytes: Some(unix_ms << 10),
///     ..TimelinePoint::default()
/// });
/// let marks = [TimelineMark { unix_ms: 1000, label: "limit".into(), detail: "90 %".into() }];
/// let mut svg = Vec::new();
/// write_timeline("a run", &points, &marks, &mut svg).unwrap();
/// assert!(String::from_utf8(svg).unwrap().contains("live heap"));
/// ```
pub fn write_timeline<W: Write>(
    title: &str,
    points: &[TimelinePoint],
    marks: &[TimelineMark],
    mut writer: W,
) -> io::Result<()> {
    let mut series: Vec<TimelinePoint> = points.to_vec();
    // Stable, so that of points at one time the last given is last, and the one kept.
    series.sort_by_key(|p| p.unix_ms);
    series.reverse();
    series.dedup_by_key(|p| p.unix_ms);
    series.reverse();

    let times = series.iter().map(|p| p.unix_ms);
    let t0 = times
        .clone()
        .chain(marks.iter().map(|m| m.unix_ms))
        .min()
        .unwrap_or(0);
    let t1 = times
        .chain(marks.iter().map(|m| m.unix_ms))
        .max()
        .unwrap_or(0)
        .max(t0 + 1);
    let y_max = series
        .iter()
        .flat_map(|r| [r.heap_bytes, r.working_set_bytes, r.limit_bytes])
        .flatten()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.08;
    let x = |t: u64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (WIDTH - LEFT - RIGHT);
    let y = |v: u64| TOP + (1.0 - v as f64 / y_max) * (HEIGHT - TOP - BOTTOM);

    write!(
        writer,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Verdana, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>
"#,
        WIDTH / 2.0,
        xml_escape(title)
    )?;
    // Axes and horizontal grid in MiB.
    for i in 0..=5 {
        let value = (y_max / 1.08 * i as f64 / 5.0) as u64;
        let yy = y(value);
        writeln!(
            writer,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{} MiB</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            value >> 20
        )?;
    }
    for i in 0..=4 {
        let t = t0 + (t1 - t0) * i / 4;
        let label = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(t),
        )
        .to_string();
        writeln!(
            writer,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            HEIGHT - BOTTOM + 18.0,
            label.get(11..19).unwrap_or(&label)
        )?;
    }
    writeln!(
        writer,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">time (UTC)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 36.0
    )?;
    let lines: [Line; 3] = [
        ("limit", "#d62728", |r| r.limit_bytes),
        ("working set", "#1f77b4", |r| r.working_set_bytes),
        ("live heap", "#2ca02c", |r| r.heap_bytes),
    ];
    for (i, (name, colour, value)) in lines.iter().enumerate() {
        let points: Vec<String> = series
            .iter()
            .filter_map(|r| Some(format!("{:.1},{:.1}", x(r.unix_ms), y(value(r)?))))
            .collect();
        if !points.is_empty() {
            writeln!(
                writer,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            )?;
        }
        let lx = LEFT + 10.0 + 130.0 * i as f64;
        writeln!(
            writer,
            r#"<line x1="{lx}" x2="{}" y1="40" y2="40" stroke="{colour}" stroke-width="3"/><text x="{}" y="44">{name}</text>"#,
            lx + 20.0,
            lx + 25.0
        )?;
    }
    for (i, mark) in marks.iter().enumerate() {
        let xx = x(mark.unix_ms);
        let label_y = TOP + 14.0 + 14.0 * (i % 4) as f64;
        writeln!(
            writer,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#9467bd" stroke-dasharray="4 3"/><text x="{:.1}" y="{label_y:.1}" fill="#9467bd" text-anchor="end"><title>{}</title>{}</text>"##,
            HEIGHT - BOTTOM,
            xx - 3.0,
            xml_escape(&mark.detail),
            xml_escape(&mark.label)
        )?;
    }
    writer.write_all(b"</svg>\n")?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: &[TimelinePoint], marks: &[TimelineMark]) -> String {
        let mut svg = Vec::new();
        write_timeline("run <1>", points, marks, &mut svg).unwrap();
        String::from_utf8(svg).unwrap()
    }

    #[test]
    fn overlapping_points_are_drawn_once_in_time_order_the_later_winning() {
        let point = |unix_ms, heap| TimelinePoint {
            unix_ms,
            heap_bytes: Some(heap),
            ..TimelinePoint::default()
        };
        let svg = chart(
            &[
                point(2000, 4 << 20),
                point(0, 1 << 20),
                point(2000, 8 << 20),
            ],
            &[TimelineMark {
                unix_ms: 1000,
                label: "limit".into(),
                detail: "a & b".into(),
            }],
        );
        roxmltree::Document::parse(&svg).expect("well-formed");
        let heap = svg
            .lines()
            .find(|l| l.contains("polyline") && l.contains("#2ca02c"))
            .expect("the heap's line");
        // Two points, left to right, the second at the top of the chart (the larger value).
        assert_eq!(heap.matches(',').count(), 2, "{heap}");
        assert!(heap.contains(r#"points="80.0,"#), "{heap}");
        assert!(svg.contains("run &lt;1&gt;") && svg.contains("a &amp; b"));
        assert!(
            !svg.contains("#d62728\" stroke-width=\"2\""),
            "no limit, no line"
        );
    }

    #[test]
    fn nothing_to_draw_is_still_an_svg() {
        roxmltree::Document::parse(&chart(&[], &[])).expect("well-formed");
    }
}
