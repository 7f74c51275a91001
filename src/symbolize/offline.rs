//! Offline symbolization: naming the addresses of a profile written without names (or on
//! another machine) from the binary's own symbol table.

use super::elf::{demangle, ElfSymbols};
use crate::profile::{Line, Profile};
use object::{Object, ObjectSegment};
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
    /// Not an ELF file with symbols.
    #[error("{0} is not an ELF file with a symbol table")]
    NoSymbols(String),
    /// The profile has no mapping that this binary could be.
    #[error("no mapping in the profile matches {0} (by build id or file name)")]
    NoMatchingMapping(String),
}

/// Names every unnamed location of `profile` that lies in `binary`'s mapping (matched by GNU
/// build id, then by file name, then — if the profile has a single mapping — that one).
/// Returns how many locations were named.
pub fn symbolize_with_binary(
    profile: &mut Profile,
    binary: &Path,
) -> Result<usize, SymbolizeError> {
    let shown = binary.display().to_string();
    let bytes = std::fs::read(binary).map_err(|source| SymbolizeError::Read {
        path: shown.clone(),
        source,
    })?;
    let elf = object::File::parse(&*bytes).map_err(|_| SymbolizeError::NoSymbols(shown.clone()))?;
    let build_id = elf
        .build_id()
        .ok()
        .flatten()
        .map(super::modules::hex)
        .unwrap_or_default();
    let segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .collect();
    let path_str = binary
        .to_str()
        .ok_or_else(|| SymbolizeError::NoSymbols(shown.clone()))?;
    let symbols =
        ElfSymbols::load(path_str).ok_or_else(|| SymbolizeError::NoSymbols(shown.clone()))?;
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
    let mut named = 0;
    for location in profile.locations.iter_mut().filter(|l| l.lines.is_empty()) {
        let Some(mapping) = location.mapping.filter(|m| matches.contains(m)) else {
            continue;
        };
        let mapping = &profile.mappings[mapping];
        let Some(file_offset) = location
            .address
            .checked_sub(mapping.memory_start)
            .map(|d| d + mapping.file_offset)
        else {
            continue;
        };
        let Some(&(offset, _, vaddr)) = segments
            .iter()
            .find(|(offset, size, _)| (*offset..offset + size).contains(&file_offset))
        else {
            continue;
        };
        if let Some(raw) = symbols.lookup(vaddr + (file_offset - offset)) {
            location.lines.push(Line {
                function: demangle(raw),
                ..Line::default()
            });
            named += 1;
        }
    }
    Ok(named)
}
