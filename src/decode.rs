//! Reading pprof heap profiles back — heapwatch's own and foreign ones (a Go program's
//! `/debug/pprof/heap`) — into a [`Profile`], for the `heapwatch` command and for tools.
//!
//! Every index in the file is checked: a corrupt or hostile file gives an error, never a panic.

use crate::encode::proto;
use crate::profile::{Line, Location, Mapping, Profile, Sample, SampleType};
use prost::Message;
use std::collections::HashMap;
use std::io::Read;

/// Why a file could not be read as a heap profile.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// It starts as gzip but does not decompress (truncated or corrupt).
    #[error("corrupt or truncated gzip data: {0}")]
    Gzip(#[source] std::io::Error),
    /// Not a pprof protobuf.
    #[error("not a pprof profile: {0}")]
    NotAProfile(#[source] prost::DecodeError),
    /// A pprof profile, but with none of the heap sample types.
    #[error("not a heap profile: its sample types are {0}")]
    NotAHeapProfile(String),
    /// A reference inside the profile points nowhere.
    #[error("corrupt profile: {0}")]
    Corrupt(String),
}

/// The largest decompressed profile accepted (a bound against gzip bombs).
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Decodes a pprof heap profile, gzip-compressed or not.
///
/// ```
/// let profile = heapwatch::snapshot();
/// let mut bytes = Vec::new();
/// heapwatch::encode::write_pprof(&profile, &mut bytes).unwrap();
/// let back = heapwatch::decode::read_pprof(&bytes).unwrap();
/// assert_eq!(back.samples.len(), profile.samples.len());
/// assert!(heapwatch::decode::read_pprof(b"not a profile").is_err());
/// ```
pub fn read_pprof(bytes: &[u8]) -> Result<Profile, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_DECOMPRESSED)
            .read_to_end(&mut raw)
            .map_err(DecodeError::Gzip)?;
        raw
    } else {
        bytes.to_vec()
    };
    let decoded = proto::Profile::decode(&raw[..]).map_err(DecodeError::NotAProfile)?;
    from_proto(&decoded)
}

fn from_proto(p: &proto::Profile) -> Result<Profile, DecodeError> {
    let string = |index: i64| -> Result<&str, DecodeError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map(String::as_str)
            .ok_or_else(|| DecodeError::Corrupt(format!("string index {index} out of range")))
    };
    // Which column of the file holds each of our four types.
    let mut columns: [Option<usize>; 4] = [None; 4];
    let mut names = Vec::new();
    for (column, value_type) in p.sample_type.iter().enumerate() {
        let name = string(value_type.r#type)?;
        names.push(format!("{name}/{}", string(value_type.unit)?));
        if let Ok(t) = name.parse::<SampleType>() {
            columns[t.index()] = Some(column);
        }
    }
    if columns.iter().all(Option::is_none) {
        return Err(DecodeError::NotAHeapProfile(if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }));
    }

    let functions: HashMap<u64, &proto::Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let mapping_index: HashMap<u64, usize> = p
        .mapping
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id, i))
        .collect();
    let mappings = p
        .mapping
        .iter()
        .map(|m| {
            Ok(Mapping {
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
                path: string(m.filename)?.to_owned(),
                build_id: string(m.build_id)?.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let mut location_index = HashMap::new();
    let mut locations = Vec::with_capacity(p.location.len());
    for location in &p.location {
        let mut lines = Vec::new();
        for line in &location.line {
            let function = functions.get(&line.function_id).ok_or_else(|| {
                DecodeError::Corrupt(format!("function id {} not defined", line.function_id))
            })?;
            let file = string(function.filename)?;
            lines.push(Line {
                function: string(function.name)?.to_owned(),
                system_name: string(function.system_name)?.to_owned(),
                file: (!file.is_empty()).then(|| file.to_owned()),
                line: u32::try_from(line.line).unwrap_or(0),
            });
        }
        location_index.insert(location.id, locations.len());
        locations.push(Location {
            address: location.address,
            mapping: mapping_index.get(&location.mapping_id).copied(),
            lines,
        });
    }
    let mut samples = Vec::with_capacity(p.sample.len());
    for sample in &p.sample {
        let mut values = [0i64; 4];
        for (ours, column) in columns.iter().enumerate() {
            if let Some(column) = column {
                values[ours] = sample.value.get(*column).copied().ok_or_else(|| {
                    DecodeError::Corrupt("a sample has fewer values than sample types".to_owned())
                })?;
            }
        }
        let stack = sample
            .location_id
            .iter()
            .map(|id| {
                location_index
                    .get(id)
                    .copied()
                    .ok_or_else(|| DecodeError::Corrupt(format!("location id {id} not defined")))
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        samples.push(Sample {
            locations: stack,
            values,
        });
    }
    let default_sample_type = string(p.default_sample_type)
        .ok()
        .and_then(|n| n.parse().ok());
    Ok(Profile {
        time_nanos: p.time_nanos,
        sample_rate_bytes: u64::try_from(p.period).unwrap_or(0),
        samples,
        locations,
        mappings,
        default_sample_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let profile = Profile::one_site("grow", 0x1234, [2, 200, 1, 100]);
        let mut bytes = Vec::new();
        crate::encode::write_pprof(&profile, &mut bytes).unwrap();
        let back = read_pprof(&bytes).unwrap();
        assert_eq!(back.samples[0].values, [2, 200, 1, 100]);
        assert_eq!(back.locations[0].lines[0].function, "grow");

        assert!(matches!(read_pprof(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            read_pprof(&bytes[..bytes.len() / 2]),
            Err(DecodeError::Gzip(_))
        ));
        assert!(matches!(
            read_pprof(b"\x1f\x8bnot really gzip"),
            Err(DecodeError::Gzip(_))
        ));
        assert!(read_pprof(b"\xff\xff\xff\xff garbage").is_err());
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut bytes = Vec::new();
        crate::encode::write_pprof(&crate::snapshot(), &mut bytes).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut mutated = raw.clone();
            for _ in 0..1 + next() % 8 {
                if mutated.is_empty() {
                    break;
                }
                let at = (next() % mutated.len() as u64) as usize;
                mutated[at] = next() as u8;
            }
            let cut = (next() % (mutated.len() as u64 + 1)) as usize;
            let _ = read_pprof(&mutated[..cut]);
            let noise: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
            let _ = read_pprof(&noise);
        }
    }
}
