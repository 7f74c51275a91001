//! The CPU profile encoder: a [`CpuProfile`] as gzip-compressed pprof, laid out as Go's
//! `/debug/pprof/profile` answers (sample types `samples/count` and `cpu/nanoseconds`, period
//! type `cpu/nanoseconds`, the session's duration), so `go tool pprof`, Parca and Pyroscope
//! take it for a Go CPU profile. Each sample also carries a `thread` label (the thread's name),
//! which Go's profiles do not have: `go tool pprof -tagfocus=thread=worker` selects by it.

use super::proto;
use crate::cpu::data::CpuProfile;
use crate::profile::Line;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;
use std::collections::HashMap;
use std::io::{self, Write};

/// Builds the protobuf message (uncompressed) for a CPU profile.
pub fn to_cpu_pprof(profile: &CpuProfile) -> proto::Profile {
    let mut strings = Strings::default();
    let period = profile.period_nanos();
    let mut out = proto::Profile {
        sample_type: vec![
            strings.value_type("samples", "count"),
            strings.value_type("cpu", "nanoseconds"),
        ],
        period_type: Some(strings.value_type("cpu", "nanoseconds")),
        period,
        time_nanos: profile.time_nanos,
        duration_nanos: i64::try_from(profile.duration.as_nanos()).unwrap_or(i64::MAX),
        ..proto::Profile::default()
    };
    out.comment.push(strings.id(&format!(
        "heapwatch {}: CPU sampled by pprof-rs at {} Hz",
        env!("CARGO_PKG_VERSION"),
        profile.samples_per_second
    )));
    for (index, mapping) in profile.mappings.iter().enumerate() {
        // What heapwatch named in this object, so pprof tools name locally only the rest.
        let lines = || {
            profile
                .locations
                .iter()
                .filter(move |l| l.mapping == Some(index))
                .flat_map(|l| l.lines.iter())
        };
        let has_lines = lines().any(|line| line.line > 0);
        out.mapping.push(proto::Mapping {
            id: index as u64 + 1,
            memory_start: mapping.memory_start,
            memory_limit: mapping.memory_limit,
            file_offset: mapping.file_offset,
            filename: strings.id(&mapping.path),
            build_id: strings.id(&mapping.build_id),
            has_functions: lines().next().is_some(),
            has_filenames: has_lines,
            has_line_numbers: has_lines,
            has_inline_frames: profile
                .locations
                .iter()
                .any(|l| l.mapping == Some(index) && l.lines.len() > 1),
        });
    }
    let mut functions: HashMap<(&str, &str, Option<&str>), u64> = HashMap::new();
    for (index, location) in profile.locations.iter().enumerate() {
        let lines = location
            .lines
            .iter()
            .map(|line| proto::Line {
                function_id: function_id(line, &mut functions, &mut out, &mut strings),
                line: i64::from(line.line),
                column: 0,
            })
            .collect();
        out.location.push(proto::Location {
            id: index as u64 + 1,
            mapping_id: location.mapping.map_or(0, |m| m as u64 + 1),
            address: location.address,
            line: lines,
            is_folded: false,
        });
    }
    let thread_key = strings.id("thread");
    for sample in &profile.samples {
        let count = i64::try_from(sample.count).unwrap_or(i64::MAX);
        out.sample.push(proto::Sample {
            location_id: sample.locations.iter().map(|&l| l as u64 + 1).collect(),
            value: vec![count, count.saturating_mul(period)],
            label: vec![proto::Label {
                key: thread_key,
                str: strings.id(&sample.thread),
                ..proto::Label::default()
            }],
        });
    }
    out.string_table = strings.table;
    out
}

/// The id of `line`'s function, added to the profile on first use.
fn function_id<'a>(
    line: &'a Line,
    functions: &mut HashMap<(&'a str, &'a str, Option<&'a str>), u64>,
    out: &mut proto::Profile,
    strings: &mut Strings,
) -> u64 {
    let key = (
        line.function.as_str(),
        line.system_name.as_str(),
        line.file.as_deref(),
    );
    let next_id = functions.len() as u64 + 1;
    *functions.entry(key).or_insert_with(|| {
        out.function.push(proto::Function {
            id: next_id,
            name: strings.id(&line.function),
            system_name: strings.id(&line.system_name),
            filename: line.file.as_deref().map_or(0, |file| strings.id(file)),
            start_line: 0,
        });
        next_id
    })
}

/// Writes a CPU profile as gzip-compressed pprof protobuf, as Go's `/debug/pprof/profile`
/// serves it.
///
/// ```
/// let profile = heapwatch::cpu::CpuProfile::default();
/// let mut bytes = Vec::new();
/// heapwatch::encode::write_cpu_pprof(&profile, &mut bytes).unwrap();
/// assert_eq!(&bytes[..2], &[0x1f, 0x8b]); // gzip magic
/// ```
pub fn write_cpu_pprof<W: Write>(profile: &CpuProfile, writer: W) -> io::Result<()> {
    let mut encoder = GzEncoder::new(writer, Compression::fast());
    encoder.write_all(&to_cpu_pprof(profile).encode_to_vec())?;
    encoder.finish()?.flush()
}

/// The string table: entry 0 is "" (pprof requires it), each string once.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn id(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        self.table.push(text.to_owned());
        let id = self.table.len() as i64 - 1;
        self.index.insert(text.to_owned(), id);
        id
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.id(r#type),
            unit: self.id(unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::data::CpuSample;
    use crate::profile::{Location, Mapping};
    use std::time::Duration;

    fn named(function: &str) -> Location {
        Location {
            address: 0x1000,
            mapping: Some(0),
            lines: vec![Line {
                function: function.to_owned(),
                file: Some("src/app.rs".to_owned()),
                line: 3,
                ..Line::default()
            }],
        }
    }

    #[test]
    fn laid_out_as_go_cpu_profiles() {
        let profile = CpuProfile {
            time_nanos: 5,
            duration: Duration::from_secs(2),
            samples_per_second: 100,
            samples: vec![
                CpuSample {
                    locations: vec![0, 2],
                    thread: "worker".into(),
                    count: 150,
                },
                CpuSample {
                    locations: vec![1, 2],
                    thread: "main".into(),
                    count: 2,
                },
            ],
            locations: vec![named("app::spin"), named("app::idle"), named("main")],
            mappings: vec![Mapping {
                path: "/srv/app".into(),
                build_id: "abcd".into(),
                ..Mapping::default()
            }],
        };
        let mut gz = Vec::new();
        write_cpu_pprof(&profile, &mut gz).unwrap();
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        let decoded = proto::Profile::decode(&raw[..]).unwrap();
        let name = |i: i64| decoded.string_table[i as usize].as_str();
        assert_eq!(name(0), "");
        let types: Vec<_> = decoded
            .sample_type
            .iter()
            .map(|t| (name(t.r#type), name(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let period_type = decoded.period_type.unwrap();
        assert_eq!(
            (name(period_type.r#type), name(period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(decoded.period, 10_000_000);
        assert_eq!(decoded.duration_nanos, 2_000_000_000);
        assert_eq!(decoded.sample[0].value, vec![150, 1_500_000_000]);
        assert_eq!(decoded.sample[0].location_id, vec![1, 3]);
        assert_eq!(name(decoded.sample[0].label[0].key), "thread");
        assert_eq!(name(decoded.sample[0].label[0].str), "worker");
        assert_eq!(decoded.function.len(), 3);
        let leaf = &decoded.location[0];
        assert_eq!(leaf.mapping_id, 1);
        let function = &decoded.function[leaf.line[0].function_id as usize - 1];
        assert_eq!(name(function.name), "app::spin");
        assert_eq!(name(function.filename), "src/app.rs");
        assert_eq!(leaf.line[0].line, 3);
        assert_eq!(name(decoded.mapping[0].build_id), "abcd");
        assert!(decoded.mapping[0].has_functions && decoded.mapping[0].has_line_numbers);
    }
}
