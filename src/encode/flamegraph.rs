//! Flamegraph SVGs through inferno, from the folded stacks: one profile's, and the
//! differential of two (the CLI's `diff`, the watch's now-against-baseline).

use super::folded::folded_lines;
use super::pruned::{visible_part, WeightedStack};
use super::svg::write_note;
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

/// Stacks a profile may have for its flamegraph to be folded without first merging them into
/// what can be drawn: about as many lines as inferno draws at its default width.
const FOLDED_AS_THEY_ARE: usize = 1000;

/// [`write_flamegraph`], leaving out frames narrower than `min_width` percent of the total
/// (inferno's `min_width`; [`write_flamegraph`] uses inferno's default, 0.1). Dumps use 1.0:
/// narrower frames are hard to see, and drawing thousands of them is most of the
/// cost of a dump with many distinct stacks (the `.pb.gz` keeps every one).
pub fn write_flamegraph_min_width<W: Write>(
    profile: &Profile,
    sample_type: SampleType,
    title: &str,
    min_width: f64,
    mut writer: W,
) -> io::Result<()> {
    // Only what can be drawn is folded: inferno keeps every folded line in memory, and a
    // profile of many deep stacks would otherwise cost its stacks × depth in text. A profile of
    // few stacks is folded as it is: its lines are already few, and the tree would cost a
    // node per frame of its (possibly very deep) stacks.
    let lines = if profile.samples.len() <= FOLDED_AS_THEY_ARE {
        folded_lines(profile, sample_type)
    } else {
        let stacks = profile
            .samples
            .iter()
            .enumerate()
            .map(|(stack, sample)| WeightedStack {
                stack,
                root: None,
                value: sample.value(sample_type),
            });
        let visible = visible_part(profile, stacks, &[], sample_type, min_width, |_| true)
            .unwrap_or_default();
        folded_lines(&visible, sample_type)
    };
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
    write_note(
        &format!("{title}: no {} samples", sample_type.name()),
        20,
        &mut writer,
    )?;
    writer.flush()
}

/// What a differential flamegraph says about itself, for [`write_diff_flamegraph`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffFlamegraphOptions {
    /// The title at the top.
    pub title: String,
    /// The line under the title (what the colours and widths mean).
    pub subtitle: String,
    /// What the widths count: the sample type's unit (`bytes`, `count`).
    pub count_name: String,
    /// When set, an `after` without stacks gives a small SVG with this text instead of the
    /// error inferno answers a differential of only zero widths with ("No stack counts found").
    pub empty_after_note: Option<String>,
}

/// Writes the differential flamegraph of the folded stacks `after` against `before` (each the
/// lines of [`folded_lines`] joined by `\n`): widths are `after`'s values, frames that grew are
/// red, those that shrank blue.
///
/// The texts are taken by value and dropped once compared, before the picture is drawn: a
/// diff of two large profiles would otherwise hold both texts and the drawing at once.
///
/// ```
/// let before = "main;grow 100\nmain;steady 100".to_owned();
/// let after = "main;grow 900\nmain;steady 100".to_owned();
/// let options = heapwatch::encode::DiffFlamegraphOptions {
///     title: "before → after".into(),
///     subtitle: "red grew, blue shrank".into(),
///     count_name: "bytes".into(),
///     empty_after_note: None,
/// };
/// let mut svg = Vec::new();
/// heapwatch::encode::write_diff_flamegraph(before, after, &options, &mut svg).unwrap();
/// assert!(String::from_utf8(svg).unwrap().contains("grow"));
/// ```
pub fn write_diff_flamegraph<W: Write>(
    before: String,
    after: String,
    options: &DiffFlamegraphOptions,
    writer: W,
) -> io::Result<()> {
    if after.is_empty() {
        if let Some(note) = &options.empty_after_note {
            return write_note(note, 10, writer);
        }
    }
    let mut diff = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut diff,
    )?;
    drop((before, after));
    if diff.is_empty() {
        diff.extend_from_slice(b"[no samples] 0 0\n");
    }
    let mut flamegraph_options = Options::default();
    flamegraph_options.title = options.title.clone();
    flamegraph_options.subtitle = Some(options.subtitle.clone());
    flamegraph_options.count_name = options.count_name.clone();
    flamegraph::from_reader(&mut flamegraph_options, &diff[..], writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_narrow_roots_are_each_drawn() {
        use crate::profile::{Line, Location, Sample};
        let location = |name: String| Location {
            lines: vec![Line {
                function: name,
                ..Line::default()
            }],
            ..Location::default()
        };
        let mut profile = Profile::default();
        profile.locations.push(location("[no span]".into()));
        profile.samples.push(Sample {
            locations: vec![0],
            values: [0, 0, 0, 300_000],
            labels: Vec::new(),
        });
        for root in 1..=500 {
            profile
                .locations
                .push(location(format!("span: request{{tenant={root}}}")));
            profile.samples.push(Sample {
                locations: vec![root],
                values: [0, 0, 0, 1_000],
                labels: Vec::new(),
            });
        }
        let mut svg = Vec::new();
        write_flamegraph(&profile, SampleType::InuseSpace, "t", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        // Each root is 0.125 % of the total, over inferno's 0.1 %: drawn (named in its title;
        // its label is cut to fit).
        assert_eq!(svg.matches("<title>span: request{tenant=").count(), 500);
    }

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

    #[test]
    fn differential_of_nothing_after_is_the_note_or_inferno_s_error() {
        let mut options = DiffFlamegraphOptions {
            title: "t".into(),
            subtitle: "s".into(),
            count_name: "bytes".into(),
            empty_after_note: Some("t: no inuse_space samples now".into()),
        };
        let mut svg = Vec::new();
        write_diff_flamegraph("gone 100".into(), String::new(), &options, &mut svg).unwrap();
        assert_eq!(
            String::from_utf8(svg).unwrap(),
            concat!(
                r#"<?xml version="1.0" standalone="no"?>"#,
                "\n",
                r#"<svg version="1.1" width="800" height="60" xmlns="http://www.w3.org/2000/svg">"#,
                r#"<text x="10" y="35" font-family="Verdana" font-size="17">"#,
                "t: no inuse_space samples now</text></svg>\n"
            )
        );
        options.empty_after_note = None;
        let refused = write_diff_flamegraph("gone 100".into(), String::new(), &options, Vec::new());
        assert!(refused.is_err(), "inferno has no stack to draw");
    }
}
