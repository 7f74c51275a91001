//! What every SVG heapwatch writes shares: text escaped for XML, the one-line note drawn when
//! there is nothing to draw, and the placeholder written where a flamegraph would be when
//! heapwatch is built without the `flamegraph` feature.

use std::io::{self, Write};

/// Which placeholder [`write_flamegraph_placeholder`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlamegraphPlaceholder {
    /// A page or a differential flamegraph: says only that the feature is off.
    Page,
    /// The SVG of a dump set: also points at the `.pb.gz` written beside it, which holds the
    /// same profile for `go tool pprof`.
    DumpSet,
    /// The SVG of a dump set written near the memory limit, before its addresses were named:
    /// the flamegraph replaces it when the set is named.
    Unnamed,
}

/// Writes the SVG that stands where a flamegraph would be when heapwatch is built without the
/// `flamegraph` feature (inferno), so that a dump set, a page or a differential still has an
/// SVG, one that says how to get the picture. The bytes are fixed: pages and dump sets written
/// by one build look the same as by the next.
///
/// ```
/// use heapwatch::encode::{write_flamegraph_placeholder, FlamegraphPlaceholder};
/// let mut svg = Vec::new();
/// write_flamegraph_placeholder(FlamegraphPlaceholder::Page, &mut svg).unwrap();
/// assert!(String::from_utf8(svg).unwrap().contains("without the flamegraph feature"));
/// ```
pub fn write_flamegraph_placeholder<W: Write>(
    placeholder: FlamegraphPlaceholder,
    mut writer: W,
) -> io::Result<()> {
    let svg: &[u8] = match placeholder {
        FlamegraphPlaceholder::Page => b"<svg xmlns=\"http://www.w3.org/2000/svg\"><text y=\"20\">heapwatch built without the flamegraph feature</text></svg>\n",
        FlamegraphPlaceholder::DumpSet => b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">heapwatch built without the flamegraph feature: open the .pb.gz with go tool pprof</text></svg>\n",
        FlamegraphPlaceholder::Unnamed => b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"60\"><text x=\"10\" y=\"25\">written near the memory limit, before naming: the flamegraph is drawn when the set is named</text><text x=\"10\" y=\"50\">(by the watch once the pressure passes, by the next instance, or by heapwatch symbolize)</text></svg>\n",
    };
    writer.write_all(svg)
}

/// Writes a small SVG of one line of text, `left` pixels from the edge: what a flamegraph
/// shows instead of frames when there are none (inferno refuses an input without stacks).
#[cfg(feature = "flamegraph")]
pub(super) fn write_note<W: Write>(text: &str, left: u32, mut writer: W) -> io::Result<()> {
    write!(
        writer,
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="800" height="60" xmlns="http://www.w3.org/2000/svg">"#,
            r#"<text x="{}" y="35" font-family="Verdana" font-size="17">{}</text></svg>"#,
            "\n"
        ),
        left,
        xml_escape(text)
    )
}

/// `text` with the characters XML gives a meaning escaped, for element text and attributes.
pub(super) fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pinned byte for byte: builds without inferno have always written exactly these.
    #[test]
    fn placeholders_are_the_bytes_they_always_were() {
        let placeholder = |which| {
            let mut svg = Vec::new();
            write_flamegraph_placeholder(which, &mut svg).unwrap();
            String::from_utf8(svg).unwrap()
        };
        assert_eq!(
            placeholder(FlamegraphPlaceholder::Page),
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><text y=\"20\">heapwatch built without \
             the flamegraph feature</text></svg>\n"
        );
        assert_eq!(
            placeholder(FlamegraphPlaceholder::DumpSet),
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" \
             y=\"25\">heapwatch built without the flamegraph feature: open the .pb.gz with go \
             tool pprof</text></svg>\n"
        );
        for which in [
            FlamegraphPlaceholder::Page,
            FlamegraphPlaceholder::DumpSet,
            FlamegraphPlaceholder::Unnamed,
        ] {
            roxmltree::Document::parse(&placeholder(which)).expect("well-formed");
        }
    }

    #[test]
    fn escapes_what_xml_gives_a_meaning() {
        assert_eq!(xml_escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
