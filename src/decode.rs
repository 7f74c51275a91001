//! Reading pprof heap profiles back — heapwatch's own and foreign ones (a Go program's
//! `/debug/pprof/heap`) — into a [`Profile`], for the `heapwatch` command and for tools.
//!
//! A profile file is untrusted input, and a small one can describe a huge profile: 64 KiB of
//! gzip inflate to 64 MiB, and each 2-byte empty sample decodes to a 72-byte struct. So the
//! decoder works within [`DecodeLimits`], and every bound is checked *before* the memory is
//! taken:
//!
//! 1. inflating stops with [`DecodeError::InflatedTooLarge`] once past
//!    [`max_inflated_bytes`](DecodeLimits::max_inflated_bytes) — never a silent truncation;
//! 2. the protobuf wire format is walked once without allocating: every repeated field is
//!    counted and the memory the decoded messages will take is charged against
//!    [`max_decoded_bytes`](DecodeLimits::max_decoded_bytes) before they are decoded;
//! 3. building the [`Profile`] charges the same budget for every struct and every string it
//!    copies (a 1 MiB function name referenced by a million lines is a million copies), and
//!    for the text its stacks expand to when named (what `heapwatch top`, flamegraphs and
//!    diffs build from it), so that what a caller derives from a decoded profile is bounded too.
//!
//! Exceeding either gives [`DecodeError::InflatedTooLarge`] or [`DecodeError::DecodedTooLarge`],
//! which name the limit. Every index in the file is checked: a corrupt or hostile file gives an
//! error, never a panic.

use crate::encode::proto;
use crate::profile::{Line, Location, Mapping, Profile, Sample, SampleType};
use prost::Message;
use std::collections::HashMap;
use std::io::Read;
use std::mem::size_of;

/// Why a file could not be read as a heap profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// It starts as gzip but does not decompress (truncated or corrupt).
    #[error("corrupt or truncated gzip data: {0}")]
    Gzip(#[source] std::io::Error),
    /// The reader failed.
    #[error("cannot read the profile: {0}")]
    Read(#[source] std::io::Error),
    /// Not a pprof protobuf.
    #[error("not a pprof profile: {0}")]
    NotAProfile(#[source] prost::DecodeError),
    /// Not protobuf at all: the wire format is broken at `offset` (of the inflated bytes).
    #[error("not a pprof profile: {reason} at byte {offset}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
        /// Where, in the uncompressed bytes.
        offset: usize,
    },
    /// A pprof profile, but with none of the heap sample types.
    #[error("not a heap profile: its sample types are {0}")]
    NotAHeapProfile(String),
    /// A reference inside the profile points nowhere.
    #[error("corrupt profile: {0}")]
    Corrupt(String),
    /// The profile is larger than [`DecodeLimits::max_inflated_bytes`] uncompressed: a gzip bomb,
    /// or a profile larger than the limit allows.
    #[error(
        "the profile is larger than {} uncompressed, the decoder's limit \
         (a gzip bomb, or a profile that needs a higher limit)",
        human(*limit)
    )]
    InflatedTooLarge {
        /// The limit that was reached, in bytes.
        limit: u64,
    },
    /// Decoding the profile would take more memory than [`DecodeLimits::max_decoded_bytes`]
    /// (found before that memory was taken).
    #[error(
        "decoding the profile would take more than {} of memory, the decoder's limit \
         (reached by its {what})",
        human(*limit)
    )]
    DecodedTooLarge {
        /// The limit that was reached, in bytes.
        limit: u64,
        /// The part of the profile that reached it (`samples`, `string table`, …).
        what: &'static str,
    },
}

impl DecodeError {
    /// Whether this is one of the [`DecodeLimits`] — the only errors a higher limit can cure.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            DecodeError::InflatedTooLarge { .. } | DecodeError::DecodedTooLarge { .. }
        )
    }
}

/// The default of both [`DecodeLimits`]: 64 MiB. It holds profiles of up to about 470,000 stack
/// frames in all (7,500 stacks 64 frames deep, or 14,700 stacks 32 deep, with 50-character
/// names; a Go service's heap profile is a few thousand frames), and with it no command of
/// `heapwatch` takes more than 256 MiB on any input (`tests/hostile_profiles.rs`). A dump of a
/// very large live-sample table needs a higher limit: the error says so.
pub const DEFAULT_DECODE_LIMIT: u64 = 64 << 20;

/// Bounds on the memory decoding one profile may take. Both are checked before the memory is
/// taken, and reaching one is an error that names it ([`DecodeError::is_limit`]).
///
/// ```
/// use heapwatch::decode::{read_pprof_with_limits, DecodeError, DecodeLimits};
/// let mut bytes = Vec::new();
/// heapwatch::encode::write_pprof(&heapwatch::snapshot(), &mut bytes).unwrap();
/// // Generous for a real profile…
/// assert!(read_pprof_with_limits(&bytes, &DecodeLimits::default()).is_ok());
/// // …and a clear error where a profile needs more.
/// let tiny = DecodeLimits { max_inflated_bytes: 16, max_decoded_bytes: 16 };
/// assert!(read_pprof_with_limits(&bytes, &tiny).unwrap_err().is_limit());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most bytes the profile may take uncompressed (after inflating gzip).
    pub max_inflated_bytes: u64,
    /// The most memory the decoded profile may take: the protobuf messages, the [`Profile`]
    /// built from them, and what its stacks cost once named — their text (one `;`-joined line
    /// per sample, as a flamegraph reads them) and 64 bytes per frame for the flamegraph's
    /// record of it. An estimate from above: heap blocks are counted with their allocator
    /// overhead and vectors at the capacity they grow to.
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits::new(DEFAULT_DECODE_LIMIT)
    }
}

impl DecodeLimits {
    /// Both limits at `bytes`.
    pub fn new(bytes: u64) -> Self {
        DecodeLimits {
            max_inflated_bytes: bytes,
            max_decoded_bytes: bytes,
        }
    }
}

/// Decodes a pprof heap profile, gzip-compressed or not, within the default [`DecodeLimits`].
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
    read_pprof_with_limits(bytes, &DecodeLimits::default())
}

/// Decodes a pprof heap profile, gzip-compressed or not, within `limits`.
///
/// # Errors
/// [`DecodeError::InflatedTooLarge`] or [`DecodeError::DecodedTooLarge`] when the profile needs
/// more than `limits` allow; the other variants when it is not a readable heap profile.
pub fn read_pprof_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Profile, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        return read_pprof_from(bytes, limits);
    }
    if bytes.len() as u64 > limits.max_inflated_bytes {
        return Err(DecodeError::InflatedTooLarge {
            limit: limits.max_inflated_bytes,
        });
    }
    decode(bytes, limits)
}

/// Decodes a pprof heap profile, gzip-compressed or not, from `reader` (a file, a socket)
/// within `limits`. Compressed bytes are inflated as they are read, never all held at once, and
/// reading stops at the limit: a file that never ends (`/dev/zero`) is an error too.
///
/// ```
/// let mut bytes = Vec::new();
/// heapwatch::encode::write_pprof(&heapwatch::snapshot(), &mut bytes).unwrap();
/// let limits = heapwatch::decode::DecodeLimits::default();
/// assert!(heapwatch::decode::read_pprof_from(&bytes[..], &limits).is_ok());
/// let endless = std::io::repeat(0);
/// assert!(heapwatch::decode::read_pprof_from(endless, &limits).unwrap_err().is_limit());
/// ```
///
/// # Errors
/// As [`read_pprof_with_limits`], and [`DecodeError::Read`] when `reader` fails.
pub fn read_pprof_from(reader: impl Read, limits: &DecodeLimits) -> Result<Profile, DecodeError> {
    let mut reader = reader;
    let mut magic = [0u8; 2];
    let mut have = 0;
    while have < magic.len() {
        match reader.read(&mut magic[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DecodeError::Read(e)),
        }
    }
    if have == 0 {
        return Err(DecodeError::Empty);
    }
    let whole = (&magic[..have]).chain(reader);
    let raw = if magic == GZIP_MAGIC {
        read_at_most(
            flate2::read::MultiGzDecoder::new(whole),
            limits.max_inflated_bytes,
        )
        .map_err(DecodeError::Gzip)?
    } else {
        read_at_most(whole, limits.max_inflated_bytes).map_err(DecodeError::Read)?
    };
    let Some(raw) = raw else {
        return Err(DecodeError::InflatedTooLarge {
            limit: limits.max_inflated_bytes,
        });
    };
    decode(raw, limits)
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads all of `reader` if it holds at most `limit` bytes; `None` if it holds more. The buffer
/// grows by doubling but never past the limit (`read_to_end` would double a 64 MiB buffer to
/// 128 MiB for the one byte that tells it is over).
fn read_at_most(mut reader: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        // One byte past the limit tells "exactly at the limit" from "over it".
        let want = chunk.len().min(limit.saturating_add(1) - raw.len());
        let read = match reader.read(&mut chunk[..want]) {
            Ok(0) => return Ok(Some(raw)),
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if raw.len() + read > limit {
            return Ok(None);
        }
        if raw.capacity() - raw.len() < read {
            let grow = raw
                .capacity()
                .max(64 << 10)
                .min(limit - raw.len())
                .max(read);
            raw.reserve_exact(grow);
        }
        raw.extend_from_slice(&chunk[..read]);
    }
}

/// Decodes uncompressed protobuf bytes, counting the messages before decoding them.
fn decode(raw: impl AsRef<[u8]>, limits: &DecodeLimits) -> Result<Profile, DecodeError> {
    let mut budget = Budget::new(limits.max_decoded_bytes);
    charge_messages(raw.as_ref(), &mut budget)?;
    let decoded = proto::Profile::decode(raw.as_ref()).map_err(DecodeError::NotAProfile)?;
    // Inflated bytes are not needed any more: freed before the profile is built.
    drop(raw);
    from_proto(&decoded, &mut budget)
}

fn human(bytes: u64) -> String {
    crate::encode::human_bytes(i64::try_from(bytes).unwrap_or(i64::MAX))
}

/// Memory left for decoding one profile.
struct Budget {
    left: u64,
    limit: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget { left: limit, limit }
    }

    /// Takes `bytes` from what is left, or fails naming `what` took the last of it.
    fn charge(&mut self, bytes: u64, what: &'static str) -> Result<(), DecodeError> {
        self.left = self
            .left
            .checked_sub(bytes)
            .ok_or(DecodeError::DecodedTooLarge {
                limit: self.limit,
                what,
            })?;
        Ok(())
    }
}

/// What a heap block of `bytes` takes: glibc's malloc adds an 8-byte header and rounds to
/// 16-byte granules with a 32-byte minimum (jemalloc's size classes are finer).
fn heap_block(bytes: u64) -> u64 {
    if bytes == 0 {
        0
    } else {
        (bytes.saturating_add(8 + 15) & !15).max(32)
    }
}

/// A `Vec` of `len` elements of `size` bytes grown by pushing, as prost fills repeated fields:
/// its capacity doubles from 4, so it ends at the next power of two.
fn grown_vec(len: u64, size: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    let capacity = len.checked_next_power_of_two().unwrap_or(u64::MAX).max(4);
    heap_block(capacity.saturating_mul(size as u64))
}

/// A `Vec` of `len` elements of `size` bytes allocated at its final size.
fn exact_vec(len: usize, size: usize) -> u64 {
    heap_block((len as u64).saturating_mul(size as u64))
}

/// A hash map of `len` entries of `size` bytes made with that capacity: hashbrown keeps buckets
/// at a power of two at most 7/8 full, with a control byte each and one group of slack.
fn hash_map(len: usize, size: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    let buckets = (len as u64)
        .saturating_mul(8)
        .div_ceil(7)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    heap_block(buckets.saturating_mul(size as u64 + 1).saturating_add(16))
}

/// A field's value in protobuf wire format.
enum Value<'a> {
    /// A varint, fixed64 or fixed32: one scalar.
    Scalar,
    /// Length-delimited: a nested message, a string, or packed scalars.
    Bytes(Wire<'a>),
}

/// A cursor over protobuf wire format that checks it and allocates nothing.
struct Wire<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where `bytes` starts in the whole message, for errors.
    origin: usize,
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Wire {
            bytes,
            at: 0,
            origin: 0,
        }
    }

    fn malformed(&self, reason: &'static str) -> DecodeError {
        DecodeError::Malformed {
            reason,
            offset: self.origin + self.at,
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(self.malformed("a varint runs past the end"));
            };
            // The tenth byte holds bit 63 only.
            if shift == 63 && byte > 1 {
                return Err(self.malformed("a varint longer than 64 bits"));
            }
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.malformed("a varint longer than 64 bits"))
    }

    fn skip(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.malformed("a field runs past the end of its message"))?;
        let skipped = &self.bytes[self.at..end];
        self.at = end;
        Ok(skipped)
    }

    /// The next field's number and value, or `None` at the end. Stricter than protobuf only
    /// in refusing groups (wire types 3 and 4), which pprof never uses.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let start = self.at;
        let key = self.varint()?;
        if key >> 3 == 0 || key > u64::from(u32::MAX) {
            self.at = start;
            return Err(self.malformed("a field number out of range"));
        }
        let value = match key & 7 {
            0 => self.varint().map(|_| Value::Scalar)?,
            1 => self.skip(8).map(|_| Value::Scalar)?,
            5 => self.skip(4).map(|_| Value::Scalar)?,
            2 => {
                let len = self.varint()?;
                let origin = self.origin + self.at;
                Value::Bytes(Wire {
                    bytes: self.skip(len)?,
                    at: 0,
                    origin,
                })
            }
            _ => {
                self.at = start;
                return Err(self.malformed("a group or an unknown wire type"));
            }
        };
        Ok(Some((key >> 3, value)))
    }

    /// How many varints a packed repeated field holds: each ends with a byte below 0x80.
    fn packed_varints(&self) -> u64 {
        self.bytes.iter().filter(|&&b| b < 0x80).count() as u64
    }
}

/// Charges `budget` for what prost will allocate decoding `raw` as a [`proto::Profile`],
/// counting every repeated field, nested ones too, before anything is decoded.
fn charge_messages(raw: &[u8], budget: &mut Budget) -> Result<(), DecodeError> {
    let mut top = Wire::new(raw);
    let [mut sample_types, mut samples, mut mappings, mut locations, mut functions, mut strings, mut comments] =
        [0u64; 7];
    while let Some((number, value)) = top.field()? {
        match (number, value) {
            (1, Value::Bytes(_)) => sample_types += 1,
            (2, Value::Bytes(sample)) => {
                samples += 1;
                budget.charge(sample_fields(sample)?, "samples")?;
            }
            (3, Value::Bytes(_)) => mappings += 1,
            (4, Value::Bytes(location)) => {
                locations += 1;
                budget.charge(location_fields(location)?, "locations")?;
            }
            (5, Value::Bytes(_)) => functions += 1,
            (6, Value::Bytes(string)) => {
                strings += 1;
                budget.charge(heap_block(string.bytes.len() as u64), "string table")?;
            }
            (13, Value::Scalar) => comments += 1,
            (13, Value::Bytes(packed)) => comments += packed.packed_varints(),
            _ => {}
        }
    }
    for (bytes, what) in [
        (grown_vec(samples, size_of::<proto::Sample>()), "samples"),
        (
            grown_vec(locations, size_of::<proto::Location>()),
            "locations",
        ),
        (grown_vec(strings, size_of::<String>()), "string table"),
        (
            grown_vec(functions, size_of::<proto::Function>()),
            "functions",
        ),
        (grown_vec(mappings, size_of::<proto::Mapping>()), "mappings"),
        (
            grown_vec(sample_types, size_of::<proto::ValueType>()),
            "sample types",
        ),
        (grown_vec(comments, size_of::<i64>()), "comments"),
    ] {
        budget.charge(bytes, what)?;
    }
    Ok(())
}

/// The heap a [`proto::Sample`] holds: its location ids, values and labels.
fn sample_fields(mut sample: Wire<'_>) -> Result<u64, DecodeError> {
    let [mut location_ids, mut values, mut labels] = [0u64; 3];
    while let Some((number, value)) = sample.field()? {
        match (number, value) {
            (1, Value::Scalar) => location_ids += 1,
            (1, Value::Bytes(packed)) => location_ids += packed.packed_varints(),
            (2, Value::Scalar) => values += 1,
            (2, Value::Bytes(packed)) => values += packed.packed_varints(),
            (3, Value::Bytes(_)) => labels += 1,
            _ => {}
        }
    }
    Ok(grown_vec(location_ids, size_of::<u64>())
        .saturating_add(grown_vec(values, size_of::<i64>()))
        .saturating_add(grown_vec(labels, size_of::<proto::Label>())))
}

/// The heap a [`proto::Location`] holds: its lines.
fn location_fields(mut location: Wire<'_>) -> Result<u64, DecodeError> {
    let mut lines = 0u64;
    while let Some((number, value)) = location.field()? {
        if let (4, Value::Bytes(_)) = (number, value) {
            lines += 1;
        }
    }
    Ok(grown_vec(lines, size_of::<proto::Line>()))
}

/// How the sample types read in an error: the first few, each cut short (a hostile file may
/// have millions, each a megabyte long).
fn sample_type_names(p: &proto::Profile) -> String {
    const SHOWN: usize = 4;
    const NAME_CHARS: usize = 40;
    let string = |index: i64| {
        let text = usize::try_from(index)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map_or("?", String::as_str);
        match text.char_indices().nth(NAME_CHARS) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        }
    };
    let mut names: Vec<String> = p
        .sample_type
        .iter()
        .take(SHOWN)
        .map(|t| format!("{}/{}", string(t.r#type), string(t.unit)))
        .collect();
    if p.sample_type.len() > SHOWN {
        names.push(format!("and {} more", p.sample_type.len() - SHOWN));
    }
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Length of an address as a frame name (`0x` and 16 hex digits).
const ADDRESS_TEXT: u64 = 18;
/// A folded line's value and separators.
const LINE_TEXT: u64 = 24;
/// What each frame of a stack named in full costs whoever reads it, besides its name: inferno's
/// flamegraph keeps a 56-byte record per frame, in a vector that grows by doubling. Charged
/// per frame so that a million frames named "" are not free.
const FRAME_COST: u64 = 64;

fn from_proto(p: &proto::Profile, budget: &mut Budget) -> Result<Profile, DecodeError> {
    let string = |index: i64| -> Result<&str, DecodeError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map(String::as_str)
            .ok_or_else(|| DecodeError::Corrupt(format!("string index {index} out of range")))
    };
    // Which column of the file holds each of our four types.
    let mut columns: [Option<usize>; 4] = [None; 4];
    for (column, value_type) in p.sample_type.iter().enumerate() {
        let name = string(value_type.r#type)?;
        string(value_type.unit)?;
        // Not `parse`: its error copies the name, and a million types may share a 1 MiB name.
        if let Some(t) = SampleType::ALL.into_iter().find(|t| t.name() == name) {
            columns[t.index()] = Some(column);
        }
    }
    if columns.iter().all(Option::is_none) {
        return Err(DecodeError::NotAHeapProfile(sample_type_names(p)));
    }

    // Ids index the tables; pprof requires them unique, and a repeated one would make every
    // reference to it ambiguous.
    budget.charge(
        hash_map(p.function.len(), size_of::<(u64, &proto::Function)>()),
        "functions",
    )?;
    let mut functions: HashMap<u64, &proto::Function> = HashMap::with_capacity(p.function.len());
    for function in &p.function {
        if functions.insert(function.id, function).is_some() {
            return Err(DecodeError::Corrupt(format!(
                "function id {} defined twice",
                function.id
            )));
        }
    }
    budget.charge(
        hash_map(p.mapping.len(), size_of::<(u64, usize)>())
            .saturating_add(exact_vec(p.mapping.len(), size_of::<Mapping>())),
        "mappings",
    )?;
    let mut mapping_index: HashMap<u64, usize> = HashMap::with_capacity(p.mapping.len());
    let mut mappings = Vec::with_capacity(p.mapping.len());
    for (index, m) in p.mapping.iter().enumerate() {
        if mapping_index.insert(m.id, index).is_some() {
            return Err(DecodeError::Corrupt(format!(
                "mapping id {} defined twice",
                m.id
            )));
        }
        let (path, build_id) = (string(m.filename)?, string(m.build_id)?);
        budget.charge(
            heap_block(path.len() as u64).saturating_add(heap_block(build_id.len() as u64)),
            "mappings",
        )?;
        mappings.push(Mapping {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            path: path.to_owned(),
            build_id: build_id.to_owned(),
        });
    }

    budget.charge(
        hash_map(p.location.len(), size_of::<(u64, usize)>())
            .saturating_add(exact_vec(p.location.len(), size_of::<Location>()))
            .saturating_add(exact_vec(p.location.len(), size_of::<u64>())),
        "locations",
    )?;
    let mut location_index = HashMap::with_capacity(p.location.len());
    let mut locations = Vec::with_capacity(p.location.len());
    // Per location, what it adds to a stack named in full: its frames' names, and FRAME_COST each.
    let mut frame_text = Vec::with_capacity(p.location.len());
    for location in &p.location {
        if location_index
            .insert(location.id, locations.len())
            .is_some()
        {
            return Err(DecodeError::Corrupt(format!(
                "location id {} defined twice",
                location.id
            )));
        }
        budget.charge(
            exact_vec(location.line.len(), size_of::<Line>()),
            "locations",
        )?;
        let mut lines = Vec::with_capacity(location.line.len());
        let mut text = 0u64;
        for line in &location.line {
            let function = functions.get(&line.function_id).ok_or_else(|| {
                DecodeError::Corrupt(format!("function id {} not defined", line.function_id))
            })?;
            let (name, system_name, file) = (
                string(function.name)?,
                string(function.system_name)?,
                string(function.filename)?,
            );
            // Each line copies its function's strings: one long name referenced by many lines
            // is many copies.
            budget.charge(
                heap_block(name.len() as u64)
                    .saturating_add(heap_block(system_name.len() as u64))
                    .saturating_add(heap_block(file.len() as u64)),
                "function names copied into lines",
            )?;
            text = text.saturating_add(name.len() as u64 + 1 + FRAME_COST);
            lines.push(Line {
                function: name.to_owned(),
                system_name: system_name.to_owned(),
                file: (!file.is_empty()).then(|| file.to_owned()),
                line: u32::try_from(line.line).unwrap_or(0),
            });
        }
        let mapping = mapping_index.get(&location.mapping_id).copied();
        if lines.is_empty() {
            // Named by its address, or by its object's file name in brackets: a name made
            // afresh each time a tool names it, so charged here once per location.
            let object = mapping.map_or(0, |m: usize| mappings[m].path.len() as u64 + 2);
            text = ADDRESS_TEXT.max(object) + 1 + FRAME_COST;
            budget.charge(text, "location names")?;
        }
        frame_text.push(text);
        locations.push(Location {
            address: location.address,
            mapping,
            lines,
        });
    }

    budget.charge(exact_vec(p.sample.len(), size_of::<Sample>()), "samples")?;
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
        budget.charge(
            exact_vec(sample.location_id.len(), size_of::<usize>()),
            "samples",
        )?;
        let mut stack = Vec::with_capacity(sample.location_id.len());
        let mut named = LINE_TEXT;
        for id in &sample.location_id {
            let index = location_index
                .get(id)
                .copied()
                .ok_or_else(|| DecodeError::Corrupt(format!("location id {id} not defined")))?;
            // `frame_text` has an entry for every location `location_index` names.
            named = named.saturating_add(frame_text[index]);
            stack.push(index);
        }
        // A stack of a few locations with long names reads as a long line: this bounds what a
        // flamegraph, a diff or a report builds from the profile.
        budget.charge(named, "stacks named in full")?;
        let labels = string_labels(&sample.label, &string, budget)?;
        samples.push(Sample {
            locations: stack,
            values,
            labels,
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

/// A sample's string labels (a span and its fields), each key and value copied and charged;
/// numeric labels, which heapwatch does not write, are left out.
fn string_labels<'p>(
    labels: &[proto::Label],
    string: &impl Fn(i64) -> Result<&'p str, DecodeError>,
    budget: &mut Budget,
) -> Result<Vec<(String, String)>, DecodeError> {
    let labels: Vec<&proto::Label> = labels.iter().filter(|label| label.str != 0).collect();
    budget.charge(
        exact_vec(labels.len(), size_of::<(String, String)>()),
        "labels",
    )?;
    labels
        .into_iter()
        .map(|label| {
            let (key, value) = (string(label.key)?, string(label.str)?);
            budget.charge(
                heap_block(key.len() as u64).saturating_add(heap_block(value.len() as u64)),
                "labels",
            )?;
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
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
    fn span_labels_round_trip_and_a_label_bomb_is_refused() {
        let mut profile = Profile::one_site("grow", 0x1234, [2, 200, 1, 100]);
        profile.samples[0].labels = vec![
            ("span".to_owned(), "request".to_owned()),
            ("route".to_owned(), "/export".to_owned()),
        ];
        let mut bytes = Vec::new();
        crate::encode::write_pprof(&profile, &mut bytes).unwrap();
        assert_eq!(
            read_pprof(&bytes).unwrap().samples[0].labels,
            profile.samples[0].labels
        );

        // One 1 MiB string referenced by 20,000 labels: 20 GiB once copied, from a file of a
        // few hundred KiB. Refused within the decode limit, before any copy.
        let mut message = crate::encode::to_pprof(&profile);
        message.string_table.push("x".repeat(1 << 20));
        let long = message.string_table.len() as i64 - 1;
        message.sample[0].label = vec![
            proto::Label {
                key: long,
                str: long,
                ..Default::default()
            };
            20_000
        ];
        let error = read_pprof(&message.encode_to_vec()).unwrap_err();
        assert!(error.is_limit(), "{error}");

        // A label naming a string that does not exist.
        let mut message = crate::encode::to_pprof(&profile);
        message.sample[0].label[0].str = 1 << 40;
        assert!(read_pprof(&message.encode_to_vec()).is_err());
    }

    #[test]
    fn repeated_ids_are_refused() {
        // A reference to a repeated id could mean either entry: pprof refuses such files, and
        // so does the decoder, naming the id.
        let valid = || proto::Profile {
            string_table: ["", "inuse_space", "bytes", "grow"]
                .map(String::from)
                .to_vec(),
            sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
            mapping: vec![proto::Mapping {
                id: 7,
                ..Default::default()
            }],
            function: vec![proto::Function {
                id: 1,
                name: 3,
                ..Default::default()
            }],
            location: vec![proto::Location {
                id: u64::MAX,
                mapping_id: 7,
                line: vec![proto::Line {
                    function_id: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            sample: vec![proto::Sample {
                location_id: vec![u64::MAX],
                value: vec![100],
                ..Default::default()
            }],
            ..Default::default()
        };
        let read = |p: proto::Profile| read_pprof(&p.encode_to_vec());
        // Ids as large as they come are fine.
        assert_eq!(read(valid()).unwrap().samples[0].values[3], 100);

        let mut twice = valid();
        twice.location.push(twice.location[0].clone());
        let error = read(twice).unwrap_err().to_string();
        assert!(
            error.contains("location id 18446744073709551615 defined twice"),
            "{error}"
        );
        let mut twice = valid();
        twice.function.push(twice.function[0]);
        let error = read(twice).unwrap_err().to_string();
        assert!(error.contains("function id 1 defined twice"), "{error}");
        let mut twice = valid();
        twice.mapping.push(twice.mapping[0]);
        let error = read(twice).unwrap_err().to_string();
        assert!(error.contains("mapping id 7 defined twice"), "{error}");
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut bytes = Vec::new();
        crate::encode::write_pprof(&crate::snapshot::snapshot(), &mut bytes).unwrap();
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
