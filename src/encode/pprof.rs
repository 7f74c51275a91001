//! The pprof encoder: a [`Profile`] as a gzip-compressed `perftools.profiles.Profile`, the
//! format `go tool pprof`, Parca, Pyroscope and Speedscope read, with the four heap sample types
//! Go writes and mappings carrying build ids for offline symbolization.

use super::proto;
use crate::profile::{Location, Mapping, Profile, SampleType};
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;
use std::collections::HashMap;
use std::io::{self, Write};

/// Builds the protobuf message (uncompressed) for a profile.
pub fn to_pprof(profile: &Profile) -> proto::Profile {
    let mut strings = StringTable::default();
    let mut out = header(profile, &mut strings);
    for sample in &profile.samples {
        out.sample.push(proto::Sample {
            location_id: sample.locations.iter().map(|&l| l as u64 + 1).collect(),
            value: sample.values.to_vec(),
            label: string_labels(&sample.labels, &mut strings),
        });
    }
    out.string_table = strings.into_table();
    out
}

/// Everything of a profile's message but its samples and string table: sample types,
/// period, comment, mappings, functions and locations.
fn header(profile: &Profile, strings: &mut StringTable) -> proto::Profile {
    let mut out = proto::Profile {
        sample_type: SampleType::ALL
            .iter()
            .map(|t| proto::ValueType {
                r#type: strings.id(t.name()),
                unit: strings.id(t.unit()),
            })
            .collect(),
        period_type: Some(proto::ValueType {
            r#type: strings.id("space"),
            unit: strings.id("bytes"),
        }),
        period: profile.sample_rate_bytes as i64,
        time_nanos: profile.time_nanos,
        default_sample_type: strings.id(profile
            .default_sample_type
            .unwrap_or(SampleType::InuseSpace)
            .name()),
        ..proto::Profile::default()
    };
    out.comment.push(strings.id(&format!(
        "heapwatch {}: sampled every {} bytes on average (Poisson), values unbiased",
        env!("CARGO_PKG_VERSION"),
        profile.sample_rate_bytes
    )));

    write_code(&profile.mappings, &profile.locations, strings, &mut out);
    out
}

#[cfg(feature = "http")]
/// One sample of [`write_pprof_split`]: which sample of the profile holds its stack, the span
/// tag whose labels it carries, and its four values.
pub(crate) struct SplitSample {
    pub stack: usize,
    pub span: u32,
    pub values: [i64; 4],
}

#[cfg(feature = "http")]
/// Writes `profile`'s code with `samples` in place of its own samples, each taking its stack
/// from the profile's sample `stack` and its labels from `labels_of(span)`, straight into the
/// gzip stream: one sample's message in memory at a time, so the memory spent follows the
/// distinct stacks and spans, not the samples. Protobuf merges concatenated messages
/// (repeated fields append), so the header, each sample and the string table are written
/// one after another.
pub(crate) fn write_pprof_split<W: Write>(
    profile: &Profile,
    samples: impl Iterator<Item = SplitSample>,
    mut labels_of: impl FnMut(u32) -> Vec<(String, String)>,
    writer: W,
) -> io::Result<()> {
    let mut strings = StringTable::default();
    let header = header(profile, &mut strings);
    let mut encoder = GzEncoder::new(writer, Compression::fast());
    encoder.write_all(&header.encode_to_vec())?;
    drop(header);
    let mut labels: HashMap<u32, Vec<proto::Label>> = HashMap::new();
    let mut message = proto::Sample::default();
    let mut buffer = Vec::new();
    for sample in samples {
        let Some(stack) = profile.samples.get(sample.stack) else {
            continue;
        };
        message.location_id.clear();
        message
            .location_id
            .extend(stack.locations.iter().map(|&l| l as u64 + 1));
        message.value.clear();
        message.value.extend_from_slice(&sample.values);
        message.label.clone_from(
            labels
                .entry(sample.span)
                .or_insert_with(|| string_labels(&labels_of(sample.span), &mut strings)),
        );
        buffer.clear();
        // Field 2 of `Profile`: `repeated Sample sample`.
        prost::encoding::message::encode(2, &message, &mut buffer);
        encoder.write_all(&buffer)?;
    }
    let table = proto::Profile {
        string_table: strings.into_table(),
        ..proto::Profile::default()
    };
    encoder.write_all(&table.encode_to_vec())?;
    encoder.finish()?.flush()
}

/// Writes a profile as gzip-compressed pprof protobuf (a `.pb.gz` file).
///
/// ```
/// let profile = heapwatch::snapshot();
/// let mut bytes = Vec::new();
/// heapwatch::encode::write_pprof(&profile, &mut bytes).unwrap();
/// assert_eq!(&bytes[..2], &[0x1f, 0x8b]); // gzip magic
/// ```
pub fn write_pprof<W: Write>(profile: &Profile, writer: W) -> io::Result<()> {
    let message = to_pprof(profile);
    // The fastest level: profiles are written when memory is short, and on scrape; the files
    // come out ~15 % larger than at the default level, in a fraction of the time.
    let mut encoder = GzEncoder::new(writer, Compression::fast());
    encoder.write_all(&message.encode_to_vec())?;
    encoder.finish()?.flush()
}

/// Writes the mappings, functions and locations of a profile's code into `out`: shared by the
/// heap and the CPU encoders, which differ only in their samples.
pub(super) fn write_code(
    mappings: &[Mapping],
    locations: &[Location],
    strings: &mut StringTable,
    out: &mut proto::Profile,
) {
    // Per mapping, so that pprof tools symbolize locally only the objects we could not name.
    for (index, mapping) in mappings.iter().enumerate() {
        let mut has_functions = false;
        let mut has_lines = false;
        let mut has_inline = false;
        for location in locations.iter().filter(|l| l.mapping == Some(index)) {
            has_functions |= !location.lines.is_empty();
            has_lines |= location.lines.iter().any(|line| line.line > 0);
            has_inline |= location.lines.len() > 1;
        }
        out.mapping.push(proto::Mapping {
            id: index as u64 + 1,
            memory_start: mapping.memory_start,
            memory_limit: mapping.memory_limit,
            file_offset: mapping.file_offset,
            filename: strings.id(&mapping.path),
            build_id: strings.id(&mapping.build_id),
            has_functions,
            has_filenames: has_lines,
            has_line_numbers: has_lines,
            has_inline_frames: has_inline,
        });
    }

    let mut function_ids: HashMap<(&str, &str, Option<&str>), u64> = HashMap::new();
    for (index, location) in locations.iter().enumerate() {
        let mut lines = Vec::with_capacity(location.lines.len());
        for line in &location.lines {
            let key = (
                line.function.as_str(),
                line.system_name.as_str(),
                line.file.as_deref(),
            );
            let next_id = function_ids.len() as u64 + 1;
            let function_id = *function_ids.entry(key).or_insert_with(|| {
                // pprof takes a `name` equal to its `system_name` for a mangled C++ name and
                // "simplifies" it (`<F as Handler>::call` became `::call`); the raw symbol as
                // `system_name` keeps the readable `name` as written.
                out.function.push(proto::Function {
                    id: next_id,
                    name: strings.id(&line.function),
                    system_name: strings.id(&line.system_name),
                    filename: line.file.as_deref().map_or(0, |f| strings.id(f)),
                    start_line: 0,
                });
                next_id
            });
            lines.push(proto::Line {
                function_id,
                line: i64::from(line.line),
                column: 0,
            });
        }
        out.location.push(proto::Location {
            id: index as u64 + 1,
            mapping_id: location.mapping.map_or(0, |m| m as u64 + 1),
            address: location.address,
            line: lines,
            is_folded: false,
        });
    }
}

/// pprof's string table: entry 0 is "", each string once.
#[derive(Default)]
pub(super) struct StringTable {
    ids: HashMap<String, i64>,
    table: Vec<String>,
}

impl StringTable {
    pub(super) fn id(&mut self, text: &str) -> i64 {
        if self.table.is_empty() {
            self.table.push(String::new());
            self.ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }

    /// A sample or period type.
    #[cfg_attr(not(feature = "cpu"), allow(dead_code))] // the CPU encoder's
    pub(super) fn value_type(&mut self, r#type: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.id(r#type),
            unit: self.id(unit),
        }
    }

    pub(super) fn into_table(mut self) -> Vec<String> {
        self.id("");
        self.table
    }
}

/// pprof string labels of key and value pairs, their texts interned in `strings`.
fn string_labels(pairs: &[(String, String)], strings: &mut StringTable) -> Vec<proto::Label> {
    pairs
        .iter()
        .map(|(key, value)| proto::Label {
            key: strings.id(key),
            str: strings.id(value),
            num: 0,
            num_unit: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Line, Location, Mapping, Sample};

    fn sample_profile() -> Profile {
        Profile {
            time_nanos: 1,
            sample_rate_bytes: 524288,
            default_sample_type: None,
            samples: vec![Sample {
                locations: vec![0, 1],
                values: [2, 8192, 1, 4096],
                labels: Vec::new(),
            }],
            locations: vec![
                Location {
                    address: 0x1000,
                    mapping: Some(0),
                    lines: vec![Line {
                        function: "app::leaf".into(),
                        ..Line::default()
                    }],
                },
                Location {
                    address: 0x2000,
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
                path: "/bin/app".into(),
                build_id: "abcd".into(),
                ..Mapping::default()
            }],
        }
    }

    #[test]
    fn round_trips_through_protobuf_and_gzip() {
        let profile = sample_profile();
        let mut gz = Vec::new();
        write_pprof(&profile, &mut gz).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        let decoded = proto::Profile::decode(&raw[..]).unwrap();
        let name = |i: i64| decoded.string_table[i as usize].as_str();
        assert_eq!(name(0), "");
        let types: Vec<_> = decoded.sample_type.iter().map(|t| name(t.r#type)).collect();
        assert_eq!(
            types,
            [
                "alloc_objects",
                "alloc_space",
                "inuse_objects",
                "inuse_space"
            ]
        );
        assert_eq!(name(decoded.default_sample_type), "inuse_space");
        assert_eq!(decoded.period, 524288);
        assert_eq!(decoded.sample[0].value, vec![2, 8192, 1, 4096]);
        assert_eq!(decoded.sample[0].location_id, vec![1, 2]);
        let leaf = &decoded.location[0];
        let function = decoded
            .function
            .iter()
            .find(|f| f.id == leaf.line[0].function_id)
            .unwrap();
        assert_eq!(name(function.name), "app::leaf");
        assert_eq!(name(decoded.mapping[0].build_id), "abcd");
        assert!(decoded.mapping[0].has_functions);
    }
}
