//! The pprof encoder of the dump near the limit: a heap profile written straight from a copy
//! of the live-sample table, before any name is looked for. It carries the return addresses,
//! the mappings (path, build id, file offset) that let any tool name them later, and the names
//! the symbolizer had already cached; nothing is loaded, parsed, demangled or interned on the
//! way. A mapping without names says so (`has_functions` false), so that `go tool pprof` names
//! it itself where the binary is at hand.
//!
//! The protobuf is written field by field into buffers this encoder keeps between dumps, and
//! compressed by a deflate state it keeps too: once its buffers have grown to the table's
//! size, a dump allocates nothing here.

use crate::plumbing::is_machinery;
use crate::profile::SampleType;
use crate::symbolize::{code_address, CachedNames, ModuleInfo};
use crate::table::{RawSnapshot, RawStackTotals};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use foldhash::fast::FixedState;
use hashbrown::HashMap;
use std::io;

/// Field numbers of `perftools.profiles` (see [`crate::encode::proto`]).
mod field {
    pub const SAMPLE_TYPE: u32 = 1;
    pub const SAMPLE: u32 = 2;
    pub const MAPPING: u32 = 3;
    pub const LOCATION: u32 = 4;
    pub const FUNCTION: u32 = 5;
    pub const STRING_TABLE: u32 = 6;
    pub const TIME_NANOS: u32 = 9;
    pub const PERIOD_TYPE: u32 = 11;
    pub const PERIOD: u32 = 12;
    pub const COMMENT: u32 = 13;
    pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
}

const VARINT: u32 = 0;
const LENGTH_DELIMITED: u32 = 2;

/// gzip's header: deflate, no name, no time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Room kept free in the output for each deflate call.
const OUTPUT_STEP: usize = 64 << 10;

/// What a raw profile describes besides its stacks.
pub(crate) struct RawProfileHeader<'a> {
    /// When the table was copied, nanoseconds since the Unix epoch.
    pub(crate) time_nanos: i64,
    /// The mean sampling interval the samples were taken at.
    pub(crate) sample_rate_bytes: u64,
    /// The objects loaded in the process, as taken while memory was ample.
    pub(crate) modules: &'a [ModuleInfo],
    /// The name of the stack that stands for samples whose stacks did not fit.
    pub(crate) overflow_frame: &'a str,
}

/// How much of a raw profile carries names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawNaming {
    /// Distinct code addresses in the profile.
    pub(crate) locations: usize,
    /// Of those, the ones written with the names the symbolizer had cached.
    pub(crate) named: usize,
}

type Map<K, V> = HashMap<K, V, FixedState>;

/// A written location, as the leaf end of a stack sees it: whether its cached names are the
/// allocation machinery (heapwatch's own frames, the allocator shims, std's collections),
/// cut from the leaf end as a named profile's are.
#[derive(Clone, Copy, Debug)]
enum Leaf {
    /// The program's code, or code without names: the stack starts here.
    Program,
    /// Machinery through and through: left out at the leaf end.
    Machinery,
    /// Machinery inlined into the program's code: at the leaf end, the location of the same
    /// address with the machinery's frames left out.
    Partly { trimmed: u64 },
}

/// The raw pprof encoder, with its buffers.
pub(crate) struct RawPprofEncoder {
    /// The profile's fields other than samples, code and strings.
    head: Vec<u8>,
    samples: Vec<u8>,
    /// Locations, functions and mappings.
    code: Vec<u8>,
    strings: Vec<u8>,
    /// One message being built, and one nested in it.
    message: Vec<u8>,
    nested: Vec<u8>,
    /// Pre-encoded `label` fields of each span tag seen: a range of `label_bytes`.
    span_labels: Map<u32, (usize, usize)>,
    label_bytes: Vec<u8>,
    location_ids: Map<u64, (u64, Leaf)>,
    location_count: u64,
    /// By (function, system name, file) name ids.
    function_ids: Map<(u32, u32, u32), u64>,
    /// By the symbolizer's name id.
    string_ids: Map<u32, u64>,
    string_count: u64,
    /// Per module: whether a location in it was written with names.
    module_named: Vec<bool>,
    /// Locations of each stack being written, and the machinery left out at its leaf end.
    stack: Vec<u64>,
    cut: Vec<u64>,
    deflate: Compress,
}

impl Default for RawPprofEncoder {
    fn default() -> Self {
        RawPprofEncoder {
            head: Vec::new(),
            samples: Vec::new(),
            code: Vec::new(),
            strings: Vec::new(),
            message: Vec::new(),
            nested: Vec::new(),
            span_labels: Map::default(),
            label_bytes: Vec::new(),
            location_ids: Map::default(),
            location_count: 0,
            function_ids: Map::default(),
            string_ids: Map::default(),
            string_count: 0,
            module_named: Vec::new(),
            stack: Vec::new(),
            cut: Vec::new(),
            // The fastest level, as for every profile: near the limit time matters most.
            deflate: Compress::new(Compression::fast(), false),
        }
    }
}

impl RawPprofEncoder {
    /// Grows the buffers to what a profile of `frames` return addresses in `stacks` stacks
    /// needs, with room to spare, so that the next dump finds them sized. Called while
    /// memory is ample; the dump itself grows them only if the table outgrew this.
    pub(crate) fn reserve(&mut self, stacks: usize, frames: usize) {
        let reserve = |buffer: &mut Vec<u8>, bytes: usize| {
            let _ = buffer.try_reserve(bytes.saturating_sub(buffer.len()));
        };
        // About 3 bytes per location id and 16 per sample's values and framing; a location
        // (or a function, or a string) per distinct address at most, ~40 bytes each.
        let slack = |n: usize| n + n / 2 + 1024;
        reserve(&mut self.samples, slack(frames * 3 + stacks * 24));
        let distinct = frames.min(stacks * 4 + 4096);
        reserve(&mut self.code, slack(distinct * 48));
        reserve(&mut self.strings, slack(distinct * 64));
        let _ = self.location_ids.try_reserve(slack(distinct));
        let _ = self.function_ids.try_reserve(slack(distinct));
        let _ = self.string_ids.try_reserve(slack(distinct));
        let _ = self.stack.try_reserve(256);
        let _ = self.cut.try_reserve(256);
    }

    /// Encodes `raw` as a gzip-compressed pprof heap profile into `out` (cleared first).
    pub(crate) fn encode(
        &mut self,
        raw: &RawSnapshot,
        header: &RawProfileHeader<'_>,
        names: Option<&CachedNames>,
        out: &mut Vec<u8>,
    ) -> io::Result<RawNaming> {
        self.clear(header.modules.len());
        self.write_head(header);
        let mut naming = RawNaming::default();
        let mut overflow_location = None;
        for stack in raw.stacks.iter() {
            if stack.totals == RawStackTotals::default() {
                continue;
            }
            self.stack.clear();
            self.cut.clear();
            let start = stack.start as usize;
            let frames = raw
                .frames
                .get(start..start + stack.len as usize)
                .unwrap_or(&[]);
            for &return_address in frames {
                let Some(address) = code_address(return_address) else {
                    continue;
                };
                let (id, leaf) = match self.location_ids.get(&address) {
                    Some(&found) => found,
                    None => self.write_location(address, header.modules, names, &mut naming),
                };
                match leaf {
                    _ if !self.stack.is_empty() => self.stack.push(id),
                    Leaf::Program => self.stack.push(id),
                    Leaf::Machinery => self.cut.push(id),
                    Leaf::Partly { trimmed } => self.stack.push(trimmed),
                }
            }
            if self.stack.is_empty() {
                // Machinery all through: no program frame to blame, so the stack stays whole.
                std::mem::swap(&mut self.stack, &mut self.cut);
            }
            if stack.len == 0 && raw.overflowed {
                let id = *overflow_location
                    .get_or_insert_with(|| self.write_named_location(header.overflow_frame));
                self.stack.push(id);
            }
            self.write_sample(&stack.totals, stack.span);
        }
        self.write_mappings(header.modules);
        self.compress(out)?;
        Ok(naming)
    }

    fn clear(&mut self, modules: usize) {
        for buffer in [
            &mut self.head,
            &mut self.samples,
            &mut self.code,
            &mut self.strings,
            &mut self.label_bytes,
        ] {
            buffer.clear();
        }
        self.span_labels.clear();
        self.location_ids.clear();
        self.location_count = 0;
        self.function_ids.clear();
        self.string_ids.clear();
        self.string_count = 0;
        self.module_named.clear();
        self.module_named.resize(modules, false);
    }

    /// A new entry of the string table; its index.
    fn string(&mut self, text: &str) -> u64 {
        bytes_field(&mut self.strings, field::STRING_TABLE, text.as_bytes());
        self.string_count += 1;
        self.string_count - 1
    }

    /// The string table index of one of the symbolizer's names, written on first use.
    fn cached_string(&mut self, id: u32, text: &str) -> u64 {
        if let Some(&index) = self.string_ids.get(&id) {
            return index;
        }
        let index = self.string(text);
        self.string_ids.insert(id, index);
        index
    }

    fn write_head(&mut self, header: &RawProfileHeader<'_>) {
        // Entry 0 of the string table is "".
        self.string("");
        let mut default_type = 0;
        for sample_type in SampleType::ALL {
            let name = self.string(sample_type.name());
            let unit = self.string(sample_type.unit());
            self.value_type(field::SAMPLE_TYPE, name, unit);
            if sample_type == SampleType::InuseSpace {
                default_type = name;
            }
        }
        let (space, bytes) = (self.string("space"), self.string("bytes"));
        self.value_type(field::PERIOD_TYPE, space, bytes);
        let head = &mut self.head;
        varint_field(head, field::PERIOD, header.sample_rate_bytes);
        varint_field(head, field::TIME_NANOS, header.time_nanos as u64);
        let comment = self.string(&comment(header.sample_rate_bytes));
        varint_field(&mut self.head, field::COMMENT, comment);
        varint_field(&mut self.head, field::DEFAULT_SAMPLE_TYPE, default_type);
    }

    fn value_type(&mut self, number: u32, name: u64, unit: u64) {
        self.message.clear();
        varint_field(&mut self.message, 1, name);
        varint_field(&mut self.message, 2, unit);
        bytes_field(&mut self.head, number, &self.message);
    }

    /// Writes the location of a code address seen for the first time, with the names
    /// cached for it; its id.
    fn write_location(
        &mut self,
        address: u64,
        modules: &[ModuleInfo],
        names: Option<&CachedNames>,
        naming: &mut RawNaming,
    ) -> (u64, Leaf) {
        self.location_count += 1;
        let id = self.location_count;
        naming.locations += 1;
        let module = modules
            .iter()
            .position(|m| m.start <= address && address < m.limit);
        self.message.clear();
        varint_field(&mut self.message, 1, id);
        if let Some(module) = module {
            varint_field(&mut self.message, 2, module as u64 + 1);
        }
        varint_field(&mut self.message, 3, address);
        let lines = names.and_then(|names| Some((names, names.lines(address)?)));
        let mut leaf = Leaf::Program;
        if let Some((names, lines)) = lines {
            naming.named += 1;
            if let Some(module) = module {
                self.module_named[module] = true;
            }
            self.write_lines(names, lines);
            let cut = lines
                .iter()
                .take_while(|entry| is_machinery(names.text(entry.function)))
                .count();
            if cut == lines.len() {
                leaf = Leaf::Machinery;
            } else if cut > 0 {
                // The same address again, without the machinery's frames.
                bytes_field(&mut self.code, field::LOCATION, &self.message);
                self.location_count += 1;
                let trimmed = self.location_count;
                self.message.clear();
                varint_field(&mut self.message, 1, trimmed);
                if let Some(module) = module {
                    varint_field(&mut self.message, 2, module as u64 + 1);
                }
                varint_field(&mut self.message, 3, address);
                self.write_lines(names, &lines[cut..]);
                leaf = Leaf::Partly { trimmed };
            }
        }
        bytes_field(&mut self.code, field::LOCATION, &self.message);
        self.location_ids.insert(address, (id, leaf));
        (id, leaf)
    }

    /// The `line` fields of the location in `message`.
    fn write_lines(&mut self, names: &CachedNames, lines: &[crate::symbolize::LineEntry]) {
        for entry in lines {
            let function = self.function(names, entry);
            self.nested.clear();
            varint_field(&mut self.nested, 1, function);
            varint_field(&mut self.nested, 2, u64::from(entry.line));
            bytes_field(&mut self.message, 4, &self.nested);
        }
    }

    /// The location of a name that stands for no code (the overflow stack).
    fn write_named_location(&mut self, name: &str) -> u64 {
        self.location_count += 1;
        let id = self.location_count;
        let name = self.string(name);
        let function = self.function_ids.len() as u64 + 1;
        self.function_ids
            .insert((u32::MAX, u32::MAX, u32::MAX), function);
        self.message.clear();
        varint_field(&mut self.message, 1, function);
        varint_field(&mut self.message, 2, name);
        bytes_field(&mut self.code, field::FUNCTION, &self.message);
        self.message.clear();
        varint_field(&mut self.message, 1, id);
        self.nested.clear();
        varint_field(&mut self.nested, 1, function);
        bytes_field(&mut self.message, 4, &self.nested);
        bytes_field(&mut self.code, field::LOCATION, &self.message);
        id
    }

    /// The id of a cached line's function, written on first use.
    fn function(&mut self, names: &CachedNames, entry: &crate::symbolize::LineEntry) -> u64 {
        let key = (
            entry.function.index(),
            entry.system_name.map_or(u32::MAX, |s| s.index()),
            entry.file.map_or(u32::MAX, |f| f.index()),
        );
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.function_ids.len() as u64 + 1;
        self.function_ids.insert(key, id);
        let name = self.cached_string(key.0, names.text(entry.function));
        let system_name = entry
            .system_name
            .map_or(0, |s| self.cached_string(key.1, names.text(s)));
        let file = entry
            .file
            .map_or(0, |f| self.cached_string(key.2, names.text(f)));
        // `message` holds the location being written: the function goes through `nested`.
        self.nested.clear();
        varint_field(&mut self.nested, 1, id);
        varint_field(&mut self.nested, 2, name);
        varint_field(&mut self.nested, 3, system_name);
        varint_field(&mut self.nested, 4, file);
        bytes_field(&mut self.code, field::FUNCTION, &self.nested);
        id
    }

    fn write_sample(&mut self, totals: &RawStackTotals, span: u32) {
        self.message.clear();
        packed_field(&mut self.message, 1, &self.stack);
        let values = [
            totals.alloc_objects,
            totals.alloc_bytes,
            totals.inuse_objects,
            totals.inuse_bytes,
        ]
        // Estimates are never negative; `as` saturates, and adding a half rounds without a
        // call into libm per value.
        .map(|v| (v + 0.5) as u64);
        packed_field(&mut self.message, 2, &values);
        if span != 0 {
            let (start, end) = self.span_labels(span);
            self.message
                .extend_from_slice(&self.label_bytes[start..end]);
        }
        bytes_field(&mut self.samples, field::SAMPLE, &self.message);
    }

    /// The encoded `label` fields of a span tag, made on its first sample.
    fn span_labels(&mut self, span: u32) -> (usize, usize) {
        if let Some(&range) = self.span_labels.get(&span) {
            return range;
        }
        let start = self.label_bytes.len();
        // One small list per distinct tag (bounded by the layer's tag limit).
        for (key, value) in crate::spans::tags::labels(span) {
            let (key, value) = (self.string(&key), self.string(&value));
            self.nested.clear();
            varint_field(&mut self.nested, 1, key);
            varint_field(&mut self.nested, 2, value);
            bytes_field(&mut self.label_bytes, 3, &self.nested);
        }
        let range = (start, self.label_bytes.len());
        self.span_labels.insert(span, range);
        range
    }

    fn write_mappings(&mut self, modules: &[ModuleInfo]) {
        for (index, module) in modules.iter().enumerate() {
            let path = self.string(&module.path);
            let build_id = self.string(&module.build_id);
            self.message.clear();
            let message = &mut self.message;
            varint_field(message, 1, index as u64 + 1);
            varint_field(message, 2, module.start);
            varint_field(message, 3, module.limit);
            varint_field(message, 4, module.file_offset);
            varint_field(message, 5, path);
            varint_field(message, 6, build_id);
            // Whether tools should leave this object's addresses alone: only when some were
            // named. Lines and inlined frames come with them whenever the cache had DWARF's.
            let named = u64::from(self.module_named[index]);
            for number in 7..=10 {
                varint_field(message, number, named);
            }
            bytes_field(&mut self.code, field::MAPPING, &self.message);
        }
    }

    /// gzip of the concatenated fields into `out`.
    fn compress(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        out.extend_from_slice(&GZIP_HEADER);
        self.deflate.reset();
        let mut crc = Crc::new();
        for part in [&self.head, &self.samples, &self.code, &self.strings] {
            crc.update(part);
            let mut input = &part[..];
            while !input.is_empty() {
                out.reserve(OUTPUT_STEP);
                let before = self.deflate.total_in();
                self.deflate
                    .compress_vec(input, out, FlushCompress::None)
                    .map_err(io::Error::other)?;
                input = &input[(self.deflate.total_in() - before) as usize..];
            }
        }
        loop {
            out.reserve(OUTPUT_STEP);
            match self
                .deflate
                .compress_vec(&[], out, FlushCompress::Finish)
                .map_err(io::Error::other)?
            {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => {}
            }
        }
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&crc.amount().to_le_bytes());
        Ok(())
    }
}

/// The profile's comment, as the named encoder writes it.
fn comment(sample_rate_bytes: u64) -> String {
    format!(
        "heapwatch {}: sampled every {sample_rate_bytes} bytes on average (Poisson), values \
         unbiased; written before naming (names come from the symbolizer's cache)",
        env!("CARGO_PKG_VERSION"),
    )
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, number: u32, wire_type: u32) {
    varint(out, u64::from(number << 3 | wire_type));
}

/// A varint field; zero is left out, as proto3 does.
fn varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    if value != 0 {
        key(out, number, VARINT);
        varint(out, value);
    }
}

fn bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    key(out, number, LENGTH_DELIMITED);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A packed repeated varint field.
fn packed_field(out: &mut Vec<u8>, number: u32, values: &[u64]) {
    if values.is_empty() {
        return;
    }
    let len: usize = values.iter().map(|&v| varint_len(v)).sum();
    key(out, number, LENGTH_DELIMITED);
    varint(out, len as u64);
    for &value in values {
        varint(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_alloc::ProfilerAlloc;
    use crate::table::RawStack;
    use allocator_api2::vec::Vec as PVec;

    fn raw(stacks: &[(&[usize], f64)], overflowed: bool) -> RawSnapshot {
        let mut frames = PVec::new_in(ProfilerAlloc);
        let mut list = PVec::new_in(ProfilerAlloc);
        for (stack, bytes) in stacks {
            list.push(RawStack {
                start: frames.len() as u32,
                len: stack.len() as u32,
                span: 0,
                totals: RawStackTotals {
                    alloc_objects: 2.0,
                    alloc_bytes: bytes * 2.0,
                    inuse_objects: 1.0,
                    inuse_bytes: *bytes,
                },
            });
            frames.extend_from_slice(stack);
        }
        RawSnapshot {
            frames,
            stacks: list,
            overflowed,
        }
    }

    #[test]
    fn varints_are_protobufs() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut buf = &out[..];
            assert_eq!(prost::encoding::decode_varint(&mut buf).unwrap(), value);
        }
    }

    #[test]
    fn a_raw_profile_reads_back_with_addresses_mappings_and_values() {
        let modules = [
            ModuleInfo {
                path: "/srv/app".into(),
                build_id: "abcdef".into(),
                start: 0x10_0000,
                limit: 0x20_0000,
                file_offset: 0x1000,
            },
            ModuleInfo {
                path: "/lib/libc.so.6".into(),
                build_id: String::new(),
                start: 0x7f00_0000,
                limit: 0x7f10_0000,
                file_offset: 0,
            },
        ];
        let header = RawProfileHeader {
            time_nanos: 42,
            sample_rate_bytes: 512 << 10,
            modules: &modules,
            overflow_frame: "[full]",
        };
        let snapshot = raw(
            &[
                (&[0x10_0101, 0x10_0201, 0x7f00_0011], 4096.0),
                (&[0x10_0101, 0x10_0301, 0x5], 100.0),
                (&[], 7.0),
            ],
            true,
        );
        let mut encoder = RawPprofEncoder::default();
        encoder.reserve(3, 6);
        let mut out = Vec::new();
        // Twice: the second reuses every buffer and must write the same.
        let naming = encoder.encode(&snapshot, &header, None, &mut out).unwrap();
        let mut again = Vec::new();
        encoder
            .encode(&snapshot, &header, None, &mut again)
            .unwrap();
        assert_eq!(out, again);
        assert_eq!(
            naming,
            RawNaming {
                locations: 4,
                named: 0
            }
        );

        let profile = crate::decode::read_pprof(&out).expect("a valid pprof profile");
        assert_eq!(profile.time_nanos, 42);
        assert_eq!(profile.sample_rate_bytes, 512 << 10);
        assert_eq!(profile.samples.len(), 3);
        assert_eq!(profile.samples[0].values, [2, 8192, 1, 4096]);
        let addresses = |i: usize| -> Vec<u64> {
            profile.samples[i]
                .locations
                .iter()
                .map(|&l| profile.locations[l].address)
                .collect()
        };
        // Return addresses minus one; 0x5 is no code and is left out.
        assert_eq!(addresses(0), [0x10_0100, 0x10_0200, 0x7f00_0010]);
        assert_eq!(addresses(1), [0x10_0100, 0x10_0300]);
        let leaf = &profile.locations[profile.samples[0].locations[0]];
        assert_eq!(profile.mappings[leaf.mapping.unwrap()].build_id, "abcdef");
        assert_eq!(profile.mappings[0].file_offset, 0x1000);
        assert_eq!(profile.mappings[1].path, "/lib/libc.so.6");
        assert!(leaf.lines.is_empty());
        let overflow = &profile.locations[profile.samples[2].locations[0]];
        assert_eq!(overflow.lines[0].function, "[full]");
        assert_eq!(profile.total(SampleType::InuseSpace), 4096 + 100 + 7);

        // And go's protobuf schema agrees: the mapping says it has no names.
        use prost::Message;
        let mut raw_bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&out[..]), &mut raw_bytes)
            .unwrap();
        let message = crate::encode::proto::Profile::decode(&raw_bytes[..]).unwrap();
        assert!(message.mapping.iter().all(|m| !m.has_functions));
        assert_eq!(message.string_table[0], "");
        let inuse = message.string_table[message.default_sample_type as usize].as_str();
        assert_eq!(inuse, "inuse_space");
    }

    #[test]
    fn cached_names_are_written_and_their_mapping_says_so() {
        #[inline(never)]
        fn a_cached_function() -> u8 {
            std::hint::black_box(5)
        }
        let return_address = a_cached_function as *const () as usize + 1;
        let address = return_address as u64 - 1;
        // heapwatch's own frame: machinery, cut from the leaf end.
        let own = crate::table::raw_size as *const () as usize + 1;
        let _ = crate::symbolize::symbolize(&[address, own as u64 - 1]);
        let modules = crate::symbolize::loaded_module_infos();
        let header = RawProfileHeader {
            time_nanos: 1,
            sample_rate_bytes: 1,
            modules: &modules,
            overflow_frame: "[full]",
        };
        let snapshot = raw(&[(&[own, return_address], 64.0), (&[own], 8.0)], false);
        let mut encoder = RawPprofEncoder::default();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let names = loop {
            if let Some(names) = CachedNames::if_free() {
                break names;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the symbolizer stays busy"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let naming = encoder
            .encode(&snapshot, &header, Some(&names), &mut out)
            .unwrap();
        drop(names);
        assert_eq!(
            naming,
            RawNaming {
                locations: 2,
                named: 2
            }
        );
        let profile = crate::decode::read_pprof(&out).unwrap();
        assert_eq!(
            profile.samples[0].locations.len(),
            1,
            "the machinery is cut"
        );
        // Machinery all through: kept whole.
        let whole = &profile.locations[profile.samples[1].locations[0]];
        let outer = &whole.lines.last().unwrap().function;
        assert!(outer.contains("raw_size"), "{whole:?}");
        let location = &profile.locations[profile.samples[0].locations[0]];
        let outermost = location.lines.last().expect("named from the cache");
        assert!(
            outermost.function.contains("a_cached_function"),
            "{outermost:?}"
        );
        assert!(
            !outermost.system_name.is_empty(),
            "the raw symbol as system_name"
        );
    }
}
