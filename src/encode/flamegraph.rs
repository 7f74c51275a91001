//! Flamegraph SVGs through inferno, from the folded stacks.

use super::folded::folded_lines;
use crate::profile::{Profile, SampleType};
use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};
use std::io::{self, Write};

/// Writes an interactive flamegraph SVG of one sample type. A profile with no samples of that
/// type still gives a valid SVG that says so.
///
/// ```
/// let profile = heapwatch::snapshot();
/// let mut svg = Vec::new();
/// heapwatch::encode::write_flamegraph(&profile, heapwatch::SampleType::InuseSpace, "heap", &mut svg).unwrap();
/// assert!(String::from_utf8(svg).unwrap().contains("<svg"));
/// ```
pub fn write_flamegraph<W: Write>(
    profile: &Profile,
    sample_type: SampleType,
    title: &str,
    writer: W,
) -> io::Result<()> {
    write_flamegraph_min_width(profile, sample_type, title, 0.1, writer)
}

/// [`write_flamegraph`], leaving out frames narrower than `min_width` pixels (of 1200). Dumps
/// use one pixel: narrower frames cannot be seen, and drawing thousands of them is most of the
/// cost of a dump with many distinct stacks (the `.pb.gz` keeps every one).
pub fn write_flamegraph_min_width<W: Write>(
    profile: &Profile,
    sample_type: SampleType,
    title: &str,
    min_width: f64,
    mut writer: W,
) -> io::Result<()> {
    let lines = folded_lines(profile, sample_type);
    if lines.is_empty() {
        return write_empty(title, sample_type, writer);
    }
    let mut options = Options::default();
    options.title = format!("{title} ({})", sample_type.name());
    options.count_name = sample_type.unit().to_owned();
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.min_width = min_width;
    options.subtitle = Some(format!(
        "sampled every {} bytes on average; widths are unbiased estimates",
        profile.sample_rate_bytes
    ));
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut writer)?;
    writer.flush()
}

fn write_empty<W: Write>(title: &str, sample_type: SampleType, mut writer: W) -> io::Result<()> {
    let text = xml_escape(&format!("{title}: no {} samples", sample_type.name()));
    write!(
        writer,
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="800" height="60" xmlns="http://www.w3.org/2000/svg">"#,
            r#"<text x="20" y="35" font-family="Verdana" font-size="17">{}</text></svg>"#,
            "\n"
        ),
        text
    )?;
    writer.flush()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_profile_gives_valid_svg() {
        let mut svg = Vec::new();
        write_flamegraph(
            &Profile::default(),
            SampleType::InuseSpace,
            "t<1>",
            &mut svg,
        )
        .unwrap();
        let text = String::from_utf8(svg).unwrap();
        roxmltree::Document::parse(&text).expect("well-formed");
        assert!(text.contains("no inuse_space samples"));
    }
}
