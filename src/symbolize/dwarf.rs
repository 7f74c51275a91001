//! Inlined frames, files and lines from DWARF, through `addr2line` (gimli-rs): the symbolizer
//! std's own backtraces use. It parses lazily: at load, the unit headers and their address
//! ranges; a unit's line table and function tree only when an address in that unit is first
//! looked up. The sections themselves stay in the file mapping (clean pages the kernel can
//! drop), except compressed ones (distributions' debug files), inflated onto the heap.
//!
//! What the parsed units hold is measured (the heap this thread gains while addr2line works,
//! which allocates through the global allocator), held out of the program's heap counters, and
//! capped: past [`MEMORY_CAP`] the parsed state is dropped and parsed again on demand, and an
//! object whose loading alone takes half of it is named from its symbol table instead. Names
//! already resolved stay in the symbolizer's cache either way.

use super::debug_file;
use super::modules::Module;
use super::qualify::{self, CrateRoot};
use addr2line::gimli;
use memmap2::Mmap;
use object::{Object, ObjectSection};
use std::borrow::Cow;

/// Heap that parsed DWARF may hold per object; past it the parsed units are dropped and parsed
/// again on demand. An object whose unit headers alone take half of it is named from its symbol
/// table instead.
pub(crate) const MEMORY_CAP: i64 = 64 << 20;

/// Compressed debug sections are inflated only up to this many bytes per object (and what they
/// take counts against [`MEMORY_CAP`]).
const INFLATE_CAP: u64 = MEMORY_CAP as u64;

type Slice = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

/// One frame at an address, innermost first.
pub(crate) struct RawFrame {
    /// Fully qualified, demangled, without hash or generic arguments.
    pub name: String,
    /// The mangled linkage name, when the DWARF has one; for a closure placed by
    /// `qualify::closure_path`, its rustc path (`orders::hold_sessions::{closure#0}`).
    pub system_name: Option<String>,
    pub file: Option<String>,
    pub line: u32,
}

/// The DWARF of one loaded object.
pub(crate) enum DwarfSource {
    NotLoaded,
    Loaded(Box<Loaded>),
    /// No DWARF for this object (or it could not be read, or is too large to hold): named from
    /// its symbol table.
    Unavailable,
}

/// Parsed DWARF and the bytes it borrows.
pub(crate) struct Loaded {
    // Field order is drop order: `context` borrows from `inflated` and `map`, so it goes first.
    context: addr2line::Context<Slice>,
    roots: Vec<CrateRoot>,
    /// Code of the precompiled standard library: named from the symbol table only. Its units
    /// are among the largest to parse (all of std's functions, inlined trees and all, in a few
    /// units), and what std inlines into std is machinery heapwatch cuts anyway.
    std_ranges: Vec<(u64, u64)>,
    _inflated: Vec<Box<[u8]>>,
    _map: Mmap,
    /// Heap (bytes, blocks) this holds through the global allocator, as measured; held out of
    /// the program's counters until dropped.
    held: (i64, i64),
}

impl Drop for Loaded {
    fn drop(&mut self) {
        crate::thread_state::hold_for_profiler(-self.held.0, -self.held.1);
    }
}

impl DwarfSource {
    /// The frames at a file address of `module`, innermost first; empty if the object has no
    /// DWARF there.
    pub(crate) fn frames(&mut self, module: &Module, file_address: u64) -> Vec<RawFrame> {
        if let DwarfSource::NotLoaded = self {
            let (loaded, grown) = measured(|| Loaded::open(module).map(Box::new));
            *self = match loaded {
                Some(mut loaded) => {
                    loaded.hold(grown);
                    if loaded.held.0 > MEMORY_CAP / 2 {
                        tracing::warn!(
                            object = %module.path,
                            held_bytes = loaded.held.0,
                            "heapwatch: this object's DWARF is too large to hold; its inlined \
                             functions are not named"
                        );
                        DwarfSource::Unavailable
                    } else {
                        DwarfSource::Loaded(loaded)
                    }
                }
                None => DwarfSource::Unavailable,
            };
        }
        let DwarfSource::Loaded(loaded) = self else {
            return Vec::new();
        };
        // Parse what the address needs, measured; then read the names, not measured (they are
        // the caller's, and freed by it).
        let ((), grown) = measured(|| loaded.parse_for(file_address));
        loaded.hold(grown);
        let frames = loaded.frames(file_address);
        if loaded.held.0 > MEMORY_CAP {
            // Parse again on demand rather than keep growing.
            *self = DwarfSource::NotLoaded;
        }
        frames
    }

    /// Heap held by the parsed DWARF.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            DwarfSource::Loaded(loaded) => loaded.held.0.max(0) as usize,
            _ => 0,
        }
    }

    /// Whether DWARF was found for the object (loading it if needed).
    pub(crate) fn is_available(&mut self, module: &Module) -> bool {
        if let DwarfSource::NotLoaded = self {
            let _ = self.frames(module, 0);
        }
        matches!(self, DwarfSource::Loaded(_))
    }
}

/// Runs `f` and returns the heap (bytes, blocks) this thread gained meanwhile: what `f` left
/// allocated.
fn measured<T>(f: impl FnOnce() -> T) -> (T, (i64, i64)) {
    let before = crate::thread_state::thread_net().unwrap_or((0, 0));
    let out = f();
    let after = crate::thread_state::thread_net().unwrap_or(before);
    (out, (after.0 - before.0, after.1 - before.1))
}

impl Loaded {
    fn open(module: &Module) -> Option<Loaded> {
        if !module.has_file() {
            return None;
        }
        let found = debug_file::find(&module.path, &module.build_id)?;
        if !module.is_program && found.path.as_path() != std::path::Path::new(&module.path) {
            // A library's separate debug file (a distribution's libc6-dbg, say) lends its symbol
            // table, not its DWARF: inflating libc's would take 31 MiB to name a thread start.
            return None;
        }
        tracing::debug!(object = %module.path, dwarf = %found.path.display(), "heapwatch: DWARF found");
        let map = found.map;
        let mut inflated: Vec<Box<[u8]>> = Vec::new();
        let sections = {
            let file = object::File::parse(&*map).ok()?;
            let endian = if file.is_little_endian() {
                gimli::RunTimeEndian::Little
            } else {
                gimli::RunTimeEndian::Big
            };
            let mut budget = INFLATE_CAP;
            let load = |id: gimli::SectionId| -> Result<Slice, ()> {
                let Some(section) = file.section_by_name(id.name()) else {
                    return Ok(gimli::EndianSlice::new(&[], endian));
                };
                let compressed = section
                    .compressed_file_range()
                    .ok()
                    .filter(|r| r.format != object::CompressionFormat::None);
                if let Some(range) = compressed {
                    budget = budget.checked_sub(range.uncompressed_size).ok_or(())?;
                }
                let bytes: &[u8] = match section.uncompressed_data().map_err(|_| ())? {
                    Cow::Borrowed(bytes) => bytes,
                    Cow::Owned(bytes) => {
                        inflated.push(bytes.into_boxed_slice());
                        inflated.last().map_or(&[], |b| &b[..])
                    }
                };
                // SAFETY: `bytes` lies in `map` (a file mapping) or in a boxed buffer pushed
                // to `inflated`; both are moved into the `Loaded` built below, whose field
                // order drops `context` (the only holder of these slices) before them, and
                // neither the mapping nor a box's heap buffer moves when its owner moves.
                let bytes: &'static [u8] =
                    unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
                Ok(gimli::EndianSlice::new(bytes, endian))
            };
            gimli::DwarfSections::load(load).ok()?
        };
        let mut dwarf = sections.borrow(|section| *section);
        // Units share abbreviation tables (1,610 units, 361 tables in an axum service): parse
        // each shared table once instead of once per unit.
        dwarf.populate_abbreviations_cache(gimli::AbbreviationsCacheStrategy::Duplicates);
        let (roots, std_units) = crate_roots(&dwarf);
        let std_ranges = unit_ranges(&dwarf, &std_units);
        let context = addr2line::Context::from_dwarf(dwarf).ok()?;
        Some(Loaded {
            context,
            roots,
            std_ranges,
            _inflated: inflated,
            _map: map,
            held: (0, 0),
        })
    }

    fn hold(&mut self, grown: (i64, i64)) {
        self.held.0 += grown.0;
        self.held.1 += grown.1;
        crate::thread_state::hold_for_profiler(grown.0, grown.1);
    }

    /// Has the reader parse the unit holding `file_address` (its lines and functions), keeping
    /// nothing else.
    /// Whether `file_address` is code of the precompiled standard library.
    fn in_std(&self, file_address: u64) -> bool {
        let after = self.std_ranges.partition_point(|r| r.0 <= file_address);
        after > 0 && file_address < self.std_ranges[after - 1].1
    }

    fn parse_for(&self, file_address: u64) {
        if self.in_std(file_address) {
            return;
        }
        if let Ok(mut frames) = self.context.find_frames(file_address).skip_all_loads() {
            while let Ok(Some(_)) = frames.next() {}
        }
    }

    fn frames(&self, file_address: u64) -> Vec<RawFrame> {
        let mut out = Vec::new();
        if self.in_std(file_address) {
            return out;
        }
        let Ok(mut frames) = self.context.find_frames(file_address).skip_all_loads() else {
            return out;
        };
        let mut raw_names = Vec::new();
        while let Ok(Some(frame)) = frames.next() {
            let Some(function) = frame.function.as_ref() else {
                continue;
            };
            let Ok(raw) = function.raw_name() else {
                continue;
            };
            let (file, line) = frame
                .location
                .map(|l| (l.file.map(str::to_owned), l.line.unwrap_or(0)))
                .unwrap_or((None, 0));
            let name = qualify::display_name(&raw, file.as_deref(), &self.roots);
            let mangled = super::elf::demangle_rust(&raw).is_some();
            out.push(RawFrame {
                name,
                system_name: mangled.then(|| raw.to_string()),
                file,
                line,
            });
            raw_names.push(raw.into_owned());
        }
        self.place_closures(&mut out, &raw_names);
        out
    }

    /// Names each closure of an inlined chain after the function it is written in, from the
    /// generic arguments of the frames it is inlined into; its rustc name becomes its
    /// `system_name`.
    fn place_closures(&self, frames: &mut [RawFrame], raw_names: &[String]) {
        for (at, frame) in frames.iter_mut().enumerate() {
            if frame.system_name.is_some() || !frame.name.ends_with("::{{closure}}") {
                continue;
            }
            let Some(module) = frame
                .file
                .as_deref()
                .and_then(|file| qualify::module_path(file, &self.roots))
            else {
                continue;
            };
            let outer = raw_names[at + 1..].iter().map(String::as_str);
            if let Some((name, rustc_name)) = qualify::closure_path(&raw_names[at], &module, outer)
            {
                frame.name = name;
                frame.system_name = Some(rustc_name);
            }
        }
    }
}

/// The crate roots named by the binary's rustc compilation units, one per crate.
/// The crate roots named by the binary's rustc compilation units, one per crate; and the
/// offsets of the units of the precompiled standard library.
fn crate_roots(dwarf: &gimli::Dwarf<Slice>) -> (Vec<CrateRoot>, Vec<gimli::DebugInfoOffset>) {
    let mut roots: Vec<CrateRoot> = Vec::new();
    let mut std_units = Vec::new();
    let mut headers = dwarf.units();
    while let Ok(Some(header)) = headers.next() {
        let Ok(abbreviations) = dwarf.abbreviations(&header) else {
            continue;
        };
        let mut entries = header.entries(&abbreviations);
        let Ok(Some(unit_die)) = entries.next_dfs() else {
            continue;
        };
        let text = |name: gimli::DwAt| {
            unit_die
                .attr_value(name)
                .and_then(|value| root_die_string(dwarf, &header, value))
        };
        let (Some(name), comp_dir) = (text(gimli::DW_AT_name), text(gimli::DW_AT_comp_dir)) else {
            continue;
        };
        let comp_dir = comp_dir.unwrap_or_default();
        if is_precompiled_std(&comp_dir) {
            if let Some(offset) = header.debug_info_offset() {
                std_units.push(offset);
            }
        }
        if let Some(root) = qualify::crate_root(&name, &comp_dir) {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    std_units.sort_unstable_by_key(|o| o.0);
    (roots, std_units)
}

/// Units of the standard library as rustup ships it precompiled: built in `/rustc/<hash>` (std,
/// core, alloc…) or `/rust/deps/<crate>` (the crates std is built with).
fn is_precompiled_std(comp_dir: &str) -> bool {
    comp_dir.starts_with("/rustc/") || comp_dir.starts_with("/rust/deps/")
}

/// The address ranges of the given units, from `.debug_aranges`, sorted by start.
fn unit_ranges(dwarf: &gimli::Dwarf<Slice>, units: &[gimli::DebugInfoOffset]) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Ok(Some(header)) = headers.next() {
        if units
            .binary_search_by_key(&header.debug_info_offset().0, |o| o.0)
            .is_err()
        {
            continue;
        }
        let mut entries = header.entries();
        while let Ok(Some(entry)) = entries.next() {
            let range = entry.range();
            if range.end > range.begin {
                ranges.push((range.begin, range.end));
            }
        }
    }
    ranges.sort_unstable();
    ranges.shrink_to_fit();
    ranges
}

/// A string attribute of a unit's root DIE. DWARF 4 strings (inline, `.debug_str`,
/// `.debug_line_str`) are read without parsing the unit; a DWARF 5 string index needs the unit's
/// string offsets base, so the unit is parsed for it (and dropped).
fn root_die_string(
    dwarf: &gimli::Dwarf<Slice>,
    header: &gimli::UnitHeader<Slice>,
    value: gimli::AttributeValue<Slice>,
) -> Option<String> {
    let bytes = match value {
        gimli::AttributeValue::String(s) => s,
        gimli::AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok()?,
        gimli::AttributeValue::DebugLineStrRef(offset) => {
            dwarf.debug_line_str.get_str(offset).ok()?
        }
        gimli::AttributeValue::DebugStrOffsetsIndex(_) => {
            let unit = dwarf.unit(*header).ok()?;
            dwarf.attr_string(&unit, value).ok()?
        }
        _ => return None,
    };
    Some(bytes.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection};

    /// A copy of this test binary whose DWARF sections are overwritten with noise: an ELF file
    /// that parses, holding hostile debug info.
    fn corrupted_copy(dir: &std::path::Path, seed: u64) -> std::path::PathBuf {
        let exe = std::env::current_exe().unwrap();
        let mut bytes = std::fs::read(&exe).unwrap();
        let ranges: Vec<(usize, usize)> = {
            let file = object::File::parse(&*bytes).unwrap();
            [
                ".debug_info",
                ".debug_line",
                ".debug_abbrev",
                ".debug_ranges",
                ".debug_str",
            ]
            .iter()
            .filter_map(|name| file.section_by_name(name)?.file_range())
            .map(|(start, size)| (start as usize, size as usize))
            .collect()
        };
        assert!(!ranges.is_empty(), "the test binary carries DWARF");
        let mut state = seed | 1;
        for (start, size) in ranges {
            // 64 bytes spread over the section: unit headers mostly survive (the reader parses
            // them all up front, and refuses the whole file if one is broken), the entries they
            // lead to, parsed on lookup, do not.
            for at in (start + (seed as usize) * 31..start + size).step_by((size / 64).max(1)) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes[at] = state as u8;
            }
        }
        let path = dir.join(format!("corrupted-{seed}"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn hostile_dwarf_names_nothing_wrong_and_never_panics() {
        let dir = std::env::temp_dir().join(format!("heapwatch-dwarf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut loaded = 0;
        for seed in 1..=4 {
            let path = corrupted_copy(&dir, seed);
            let module = Module {
                path: path.to_str().unwrap().to_owned(),
                bias: 0,
                segments: Vec::new(),
                build_id: Vec::new(),
                is_program: true,
            };
            let mut source = DwarfSource::NotLoaded;
            // Addresses across the code; each lookup must return, whatever it finds.
            for address in (0x1000u64..0x40_0000).step_by(0x1357) {
                for frame in source.frames(&module, address) {
                    assert!(frame.name.len() < 1 << 20);
                }
            }
            loaded += matches!(source, DwarfSource::Loaded(_)) as usize;
        }
        assert!(
            loaded > 0,
            "no corrupted copy loaded: the parser was never exercised"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
