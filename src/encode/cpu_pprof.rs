//! The CPU profile encoder: a [`CpuProfile`] as gzip-compressed pprof, laid out as Go's
//! `/debug/pprof/profile` answers (sample types `samples/count` and `cpu/nanoseconds`, period
//! type `cpu/nanoseconds`, the session's duration), so `go tool pprof`, Parca and Pyroscope
//! take it for a Go CPU profile. Each sample also carries a `thread` label (the thread's name),
//! which Go's profiles do not have: `go tool pprof -tagfocus=thread=worker` selects by it.

use super::pprof::{write_code, StringTable};
use super::proto;
use crate::cpu::data::CpuProfile;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;
use std::io::{self, Write};

/// Builds the protobuf message (uncompressed) for a CPU profile.
pub fn to_cpu_pprof(profile: &CpuProfile) -> proto::Profile {
    let mut strings = StringTable::default();
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
        "heapwatch {}: CPU sampled at {} Hz",
        env!("CARGO_PKG_VERSION"),
        profile.samples_per_second
    )));
    if profile.lost_samples > 0 {
        out.comment.push(strings.id(&format!(
            "{} samples lost (interrupted in code the sampler does not walk, or beyond its table)",
            profile.lost_samples
        )));
    }
    write_code(
        &profile.mappings,
        &profile.locations,
        &mut strings,
        &mut out,
    );
    // Every object is marked as named. An object with a sampled address heapwatch could not
    // name (the loader, a library without symbols) would otherwise send `go tool pprof`, when it
    // fetches over HTTP, to POST Go's `/debug/pprof/symbol`, which heapwatch does not serve: the
    // whole fetch then fails (seen once in CI). Such a frame reads as its address instead.
    for mapping in &mut out.mapping {
        mapping.has_functions = true;
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
    out.string_table = strings.into_table();
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::data::CpuSample;
    use crate::profile::{Line, Location, Mapping};
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
            lost_samples: 3,
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
        assert!(
            decoded
                .comment
                .iter()
                .any(|&c| name(c).starts_with("3 samples lost")),
            "the lost samples are told in a comment"
        );
    }
}
