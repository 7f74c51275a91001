//! Go's legacy text heap format (`/debug/pprof/heap?debug=1`): a header of totals, one line per
//! stack with its return addresses, each followed by `#` lines that name, for a person, the
//! frames no earlier stack named (fields separated by tabs; each location is named once), and the memory map, from which `go tool pprof` (which reads this format as it reads
//! gperftools' heap profiles) finds the binaries to name the addresses.
//!
//! ```text
//! heap profile: 3: 24576 [9: 73728] @ heapprofile
//! 3: 24576 [9: 73728] @ 0x55d0c0a01235 0x55d0c0a00f11
//! #  0x55d0c0a01234  app::cache::fill+0x0  src/cache.rs:40
//! #  0x55d0c0a00f10  app::main+0x0  src/main.rs:12
//!
//! --- Memory map: ---
//! 55d0c0a00000-55d0c0b00000 r-xp 00001000 00:00 0 /srv/app
//! ```
//!
//! Two differences from what Go writes, both read the same way by pprof's parser: the header
//! ends `@ heapprofile` where Go writes `@ heap/<2 × rate>`, because heapwatch's figures are
//! already unbiased estimates (Go's are raw sample counts, which `heap/` tells pprof to scale
//! up); and the `+0x…` offset of each `#` line is `+0x0`, as heapwatch keeps the address of a
//! call, not of its function's entry. Go's trailing `# runtime.MemStats` block is left out.

use crate::profile::{Profile, Sample};
use std::io::{self, Write};

/// Writes `profile` in Go's legacy text heap format: in-use figures first, then (in brackets)
/// everything allocated, per stack, largest in-use first.
///
/// ```
/// let mut text = Vec::new();
/// heapwatch::encode::write_legacy_heap(&heapwatch::snapshot(), &mut text).unwrap();
/// assert!(text.starts_with(b"heap profile: "));
/// ```
pub fn write_legacy_heap<W: Write>(profile: &Profile, mut out: W) -> io::Result<()> {
    let figures = |sample: &Sample| {
        // pprof's parser refuses a negative alloc figure and a count of 0 beside bytes (which
        // rounding a delta can leave): at least one object wherever there are bytes.
        let pair = |objects: i64, bytes: i64| {
            let bytes = bytes.max(0);
            let objects = if bytes > 0 { objects.max(1) } else { 0 };
            (objects, bytes)
        };
        let [alloc_objects, alloc_bytes, inuse_objects, inuse_bytes] = sample.values;
        (
            pair(inuse_objects, inuse_bytes),
            pair(alloc_objects, alloc_bytes),
        )
    };
    let mut order: Vec<&Sample> = profile.samples.iter().collect();
    order.sort_by_key(|sample| std::cmp::Reverse(figures(sample).0 .1));
    let (mut inuse, mut alloc) = ((0i64, 0i64), (0i64, 0i64));
    for sample in &order {
        let (i, a) = figures(sample);
        inuse = (inuse.0.saturating_add(i.0), inuse.1.saturating_add(i.1));
        alloc = (alloc.0.saturating_add(a.0), alloc.1.saturating_add(a.1));
    }
    let mut named = vec![false; profile.locations.len()];
    let mut out = io::BufWriter::new(&mut out);
    writeln!(
        out,
        "heap profile: {}: {} [{}: {}] @ heapprofile",
        inuse.0, inuse.1, alloc.0, alloc.1
    )?;
    for sample in order {
        let (i, a) = figures(sample);
        write!(out, "{}: {} [{}: {}] @", i.0, i.1, a.0, a.1)?;
        // Return addresses, as Go writes them: pprof takes one off each to land on the call.
        for (_, location) in indexed(sample, profile) {
            write!(out, " {:#x}", location.address.wrapping_add(1))?;
        }
        writeln!(out)?;
        // Each location named once, under the first stack that holds it: pprof's parser
        // skips `#` lines, so they are for a person, and a deep stack repeated under many
        // others would otherwise be named again each time.
        for (index, location) in indexed(sample, profile) {
            if std::mem::replace(&mut named[index], true) {
                continue;
            }
            if location.lines.is_empty() {
                // pprof names it from the binary through the memory map below.
                writeln!(out, "#\t{:#x}\t[unknown]+0x0\t?:0", location.address)?;
            }
            for line in &location.lines {
                writeln!(
                    out,
                    "#\t{:#x}\t{}+0x0\t{}:{}",
                    location.address,
                    line.function,
                    line.file.as_deref().unwrap_or("?"),
                    line.line
                )?;
            }
        }
        writeln!(out)?;
    }
    writeln!(out, "--- Memory map: ---")?;
    for mapping in &profile.mappings {
        writeln!(
            out,
            "{:x}-{:x} r-xp {:08x} 00:00 0 {}",
            mapping.memory_start, mapping.memory_limit, mapping.file_offset, mapping.path
        )?;
    }
    out.flush()
}

/// A sample's locations with their indexes, innermost first, leaving out indexes the profile
/// does not hold.
fn indexed<'p>(
    sample: &'p Sample,
    profile: &'p Profile,
) -> impl Iterator<Item = (usize, &'p crate::profile::Location)> + 'p {
    sample
        .locations
        .iter()
        .filter_map(|&index| Some((index, profile.locations.get(index)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Line, Location, Mapping};

    #[test]
    fn writes_go_legacy_heap_text() {
        let profile = Profile {
            samples: vec![
                Sample {
                    locations: vec![0, 1],
                    values: [9, 73728, 3, 24576],
                    labels: Vec::new(),
                },
                Sample {
                    locations: vec![1],
                    values: [0, 100, -1, -5],
                    labels: Vec::new(),
                },
            ],
            locations: vec![
                Location {
                    address: 0x1234,
                    mapping: Some(0),
                    lines: vec![Line {
                        function: "app::fill".into(),
                        file: Some("src/cache.rs".into()),
                        line: 40,
                        ..Line::default()
                    }],
                },
                Location {
                    address: 0xf10,
                    mapping: Some(0),
                    lines: vec![Line {
                        function: "app::main".into(),
                        ..Line::default()
                    }],
                },
            ],
            mappings: vec![Mapping {
                memory_start: 0x1000,
                memory_limit: 0x9000,
                file_offset: 0x1000,
                path: "/srv/app".into(),
                ..Mapping::default()
            }],
            ..Profile::default()
        };
        let mut text = Vec::new();
        write_legacy_heap(&profile, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "heap profile: 3: 24576 [10: 73828] @ heapprofile\n\
             3: 24576 [9: 73728] @ 0x1235 0xf11\n\
             #\t0x1234\tapp::fill+0x0\tsrc/cache.rs:40\n\
             #\t0xf10\tapp::main+0x0\t?:0\n\
             \n\
             0: 0 [1: 100] @ 0xf11\n\
             \n\
             --- Memory map: ---\n\
             1000-9000 r-xp 00001000 00:00 0 /srv/app\n"
        );
    }
}
