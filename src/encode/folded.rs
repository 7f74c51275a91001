//! Folded stacks, the text format flamegraph tools read: one line per stack, frames from the
//! root to the leaf joined by `;`, then a space and the value.

use crate::profile::{Profile, SampleType};
use std::io::{self, Write};

/// The folded lines of a profile for one sample type; stacks whose value is zero are left out.
///
/// ```
/// let profile = heapwatch::snapshot();
/// for line in heapwatch::encode::folded_lines(&profile, heapwatch::SampleType::InuseSpace) {
///     assert!(line.rsplit_once(' ').is_some());
/// }
/// ```
pub fn folded_lines(profile: &Profile, sample_type: SampleType) -> Vec<String> {
    // Each location's frames, cleaned and root-first, once: stacks share most of their frames.
    let frames: Vec<String> = profile
        .locations
        .iter()
        .map(|location| {
            if location.lines.is_empty() {
                format!("{:#x}", location.address)
            } else {
                let mut names: Vec<String> =
                    location.lines.iter().map(|l| clean(&l.function)).collect();
                names.reverse();
                names.join(";")
            }
        })
        .collect();
    let mut lines = Vec::with_capacity(profile.samples.len());
    for sample in &profile.samples {
        let value = sample.value(sample_type);
        if value <= 0 {
            continue;
        }
        let mut line = String::new();
        for &index in sample.locations.iter().rev() {
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(frames.get(index).map_or("[unknown]", String::as_str));
        }
        if line.is_empty() {
            line.push_str("[unknown]");
        }
        line.push(' ');
        line.push_str(&value.to_string());
        lines.push(line);
    }
    lines
}

/// The folded lines joined by `\n` (no newline after the last): the text a differential
/// flamegraph compares (see `write_diff_flamegraph`).
///
/// ```
/// let profile = heapwatch::Profile::default();
/// assert_eq!(heapwatch::encode::folded_text(&profile, heapwatch::SampleType::InuseSpace), "");
/// ```
pub fn folded_text(profile: &Profile, sample_type: SampleType) -> String {
    folded_lines(profile, sample_type).join("\n")
}

/// Writes the folded lines, one per line.
pub fn write_folded<W: Write>(
    profile: &Profile,
    sample_type: SampleType,
    mut writer: W,
) -> io::Result<()> {
    for line in folded_lines(profile, sample_type) {
        writeln!(writer, "{line}")?;
    }
    writer.flush()
}

/// `;` separates frames and newlines separate stacks; names (e.g. `[u8; 4]`) may hold either.
fn clean(name: &str) -> String {
    name.replace(';', ",").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Line, Location, Sample};

    #[test]
    fn root_first_and_separators_escaped() {
        let location = |name: &str| Location {
            lines: vec![Line {
                function: name.into(),
                ..Line::default()
            }],
            ..Location::default()
        };
        let profile = Profile {
            locations: vec![location("leaf<[u8; 4]>"), location("main")],
            samples: vec![
                Sample {
                    locations: vec![0, 1],
                    values: [0, 0, 0, 42],
                    labels: Vec::new(),
                },
                Sample {
                    locations: vec![1],
                    values: [1, 1, 0, 0],
                    labels: Vec::new(),
                },
            ],
            ..Profile::default()
        };
        assert_eq!(
            folded_lines(&profile, SampleType::InuseSpace),
            vec!["main;leaf<[u8, 4]> 42"]
        );
    }
}
