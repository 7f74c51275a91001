//! Offline symbolization: naming the addresses of a profile written without names (or on
//! another machine) from the binary's own symbol table.

use super::elf::demangle;
use crate::profile::{Line, Mapping, Profile};
use object::{Object, ObjectSegment, SegmentFlags};
use std::path::Path;

/// Why a binary could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The binary's path.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Not an ELF file with symbols or DWARF.
    #[error("{0} is not an ELF file with a symbol table or DWARF")]
    NoSymbols(String),
    /// The profile has no mapping that this binary could be.
    #[error("no mapping in the profile matches {0} (by build id or file name)")]
    NoMatchingMapping(String),
    /// Naming the profile would add more names than allowed (see
    /// [`symbolize_with_binary_within`]): a profile of very many locations.
    #[error(
        "naming the profile would add more than {} of names, the limit (after naming {named} locations)",
        crate::encode::human_bytes(i64::try_from(*limit).unwrap_or(i64::MAX))
    )]
    TooManyNames {
        /// The limit, in bytes.
        limit: u64,
        /// Locations named before it was reached.
        named: usize,
    },
}

/// Names the locations of `profile` that lie in `binary`'s mapping (matched by GNU build id,
/// then by file name, then — if the profile has a single mapping — that one). `binary` may be
/// the program, an unstripped copy of it, or its separate debug file (`objcopy
/// --only-keep-debug`); a debug file it links to (`.gnu_debuglink`) or one under a debug
/// directory by build id is used too. Where DWARF is found (feature `dwarf`), every location of
/// the mapping is named afresh with its inlined frames, files and lines; otherwise the
/// unnamed ones are named from the symbol table. Returns how many locations were named.
pub fn symbolize_with_binary(
    profile: &mut Profile,
    binary: &Path,
) -> Result<usize, SymbolizeError> {
    symbolize_with_binary_within(profile, binary, u64::MAX)
}

/// [`symbolize_with_binary`], adding at most `max_name_bytes` of names — each line's function,
/// raw and file names, with the line itself — or failing with [`SymbolizeError::TooManyNames`]
/// (the profile then partly named). Every location gets its own copy of its names, so a
/// hostile profile of many locations in one long-named function would otherwise be named
/// into gigabytes; `heapwatch symbolize` passes its decode limit.
pub fn symbolize_with_binary_within(
    profile: &mut Profile,
    binary: &Path,
    max_name_bytes: u64,
) -> Result<usize, SymbolizeError> {
    let shown = binary.display().to_string();
    let bytes = std::fs::read(binary).map_err(|source| SymbolizeError::Read {
        path: shown.clone(),
        source,
    })?;
    let elf = object::File::parse(&*bytes).map_err(|_| SymbolizeError::NoSymbols(shown.clone()))?;
    let build_id_bytes = elf.build_id().ok().flatten().unwrap_or_default().to_vec();
    let build_id = super::modules::hex(&build_id_bytes);
    let segments: Vec<Segment> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            let executable = matches!(
                s.flags(),
                SegmentFlags::Elf { p_flags, .. } if p_flags.0 & object::elf::PF_X.0 != 0
            );
            Segment {
                offset,
                size,
                address: s.address(),
                executable,
            }
        })
        .collect();
    let path_str = binary
        .to_str()
        .ok_or_else(|| SymbolizeError::NoSymbols(shown.clone()))?;
    let module = super::modules::Module {
        path: path_str.to_owned(),
        bias: 0,
        segments: Vec::new(),
        build_id: build_id_bytes.clone(),
        is_program: true,
    };
    let symbols = super::elf::load_symbols(&module);
    #[cfg(feature = "dwarf")]
    let mut dwarf = super::dwarf::DwarfSource::NotLoaded;
    #[cfg(feature = "dwarf")]
    let has_dwarf = dwarf.is_available(&module);
    #[cfg(not(feature = "dwarf"))]
    let has_dwarf = false;
    if symbols.is_none() && !has_dwarf {
        return Err(SymbolizeError::NoSymbols(shown));
    }
    let file_name = binary.file_name().map(|n| n.to_string_lossy().into_owned());
    let matches: Vec<usize> = profile
        .mappings
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            (!build_id.is_empty() && m.build_id == build_id)
                || (m.build_id.is_empty() || build_id.is_empty())
                    && file_name.as_deref().is_some_and(|n| m.path.ends_with(n))
        })
        .map(|(i, _)| i)
        .collect();
    let matches = if matches.is_empty() && profile.mappings.len() == 1 {
        vec![0]
    } else {
        matches
    };
    if matches.is_empty() {
        return Err(SymbolizeError::NoMatchingMapping(shown));
    }
    // Indexed by mapping: a hostile profile may have as many mappings as locations.
    let mut is_match = vec![false; profile.mappings.len()];
    for &m in &matches {
        is_match[m] = true;
    }
    let mut named = 0;
    let mut name_bytes = 0u64;
    for location in profile.locations.iter_mut() {
        if !has_dwarf && !location.lines.is_empty() {
            continue;
        }
        let Some(mapping) = location.mapping.filter(|&m| is_match.get(m) == Some(&true)) else {
            continue;
        };
        let mapping = &profile.mappings[mapping];
        let Some(address) = file_address(&segments, mapping, location.address) else {
            continue;
        };
        let outer = symbols
            .as_ref()
            .and_then(|s| s.lookup(address))
            .map(|raw| Line {
                function: demangle(raw),
                system_name: String::from_utf8_lossy(raw).into_owned(),
                ..Line::default()
            });
        #[cfg(feature = "dwarf")]
        let mut lines: Vec<Line> = dwarf
            .frames(&module, address)
            .into_iter()
            .map(|frame| Line {
                function: frame.name,
                system_name: frame.system_name.unwrap_or_default(),
                file: frame.file,
                line: frame.line,
            })
            .collect();
        #[cfg(not(feature = "dwarf"))]
        let mut lines: Vec<Line> = Vec::new();
        match (lines.last_mut(), outer) {
            // The outermost frame's symbol names it whole (see `Symbolizer::resolve`).
            (Some(last), Some(outer)) => {
                last.function = outer.function;
                last.system_name = outer.system_name;
            }
            (None, Some(outer)) => lines.push(outer),
            _ => {}
        }
        if !lines.is_empty() {
            name_bytes = lines.iter().fold(name_bytes, |sum, line| {
                sum.saturating_add(
                    (std::mem::size_of::<Line>()
                        + line.function.len()
                        + line.system_name.len()
                        + line.file.as_ref().map_or(0, String::len)) as u64,
                )
            });
            if name_bytes > max_name_bytes {
                return Err(SymbolizeError::TooManyNames {
                    limit: max_name_bytes,
                    named,
                });
            }
            location.lines = lines;
            named += 1;
        }
    }
    #[cfg(feature = "dwarf")]
    super::qualify::closures_after_callers(profile);
    // Frames unnamed when the profile was taken could not be told from heapwatch's own.
    super::leaves::trim_leaves(profile);
    Ok(named)
}

/// A loadable segment of the binary.
struct Segment {
    offset: u64,
    size: u64,
    address: u64,
    executable: bool,
}

/// The address in the binary's own terms of a profile location in `mapping`: through the
/// segment at the mapping's file offset, or — in a separate debug file, whose segments hold no
/// file bytes — through its executable segment, which is what a mapping describes.
fn file_address(segments: &[Segment], mapping: &Mapping, address: u64) -> Option<u64> {
    // Checked throughout: a profile or a binary may be hostile.
    let delta = address.checked_sub(mapping.memory_start)?;
    let file_offset = mapping.file_offset.checked_add(delta)?;
    let holds = |s: &&Segment| {
        s.size > 0
            && s.offset <= file_offset
            && s.offset
                .checked_add(s.size)
                .is_some_and(|end| file_offset < end)
    };
    if let Some(segment) = segments.iter().find(holds) {
        return segment.address.checked_add(file_offset - segment.offset);
    }
    // A mapping starts where the executable segment starts.
    let code = segments.iter().find(|s| s.executable)?;
    code.address.checked_add(delta)
}
