//! Naming the addresses of sampled stacks.
//!
//! Default: function names from each object's ELF symbol table ([`elf`]), resolved once per
//! address and cached, with bounded memory (about 24 bytes per function symbol of the objects
//! that appear in stacks, plus the names actually seen). With the `dwarf` feature and
//! [`set_source_lines(true)`](crate::set_source_lines), file, line and inlined frames come from
//! DWARF instead, at the cost of loading the debug info (hundreds of MiB for a large binary).
//!
//! Runs on the thread that takes the snapshot, never on the allocation path.

mod elf;
pub(crate) mod modules;
mod offline;
pub use offline::{symbolize_with_binary, SymbolizeError};

#[cfg(feature = "dwarf")]
mod dwarf;

use crate::internal_alloc::ProfilerAlloc;
use allocator_api2::vec::Vec as PVec;
use elf::ElfSymbols;
use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashTable};
use modules::Module;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

const HASHER: FixedState = FixedState::with_seed(0x5b01_1ce5_0000_0002);

/// A name in the string arena.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct StrId(u32);

/// Interned strings in profiler memory: each distinct name stored once.
struct Strings {
    bytes: PVec<u8, ProfilerAlloc>,
    spans: PVec<(u32, u32), ProfilerAlloc>,
    index: HashTable<u32, ProfilerAlloc>,
}

impl Strings {
    const fn new() -> Self {
        Strings {
            bytes: PVec::new_in(ProfilerAlloc),
            spans: PVec::new_in(ProfilerAlloc),
            index: HashTable::new_in(ProfilerAlloc),
        }
    }

    fn get(&self, id: StrId) -> &str {
        let Some(&(start, len)) = self.spans.get(id.0 as usize) else {
            return "";
        };
        let bytes = self
            .bytes
            .get(start as usize..(start + len) as usize)
            .unwrap_or(&[]);
        // Only whole `&str`s are ever appended, so every span is valid UTF-8.
        std::str::from_utf8(bytes).unwrap_or("")
    }

    fn intern(&mut self, text: &str) -> Option<StrId> {
        let hash = HASHER.hash_one(text);
        let Strings {
            bytes,
            spans,
            index,
        } = self;
        let text_of = |id: u32| {
            let (start, len) = spans[id as usize];
            &bytes[start as usize..(start + len) as usize]
        };
        if let Some(&id) = index.find(hash, |&id| text_of(id) == text.as_bytes()) {
            return Some(StrId(id));
        }
        let start = u32::try_from(bytes.len()).ok()?;
        let len = u32::try_from(text.len()).ok()?;
        bytes.try_reserve(text.len()).ok()?;
        spans.try_reserve(1).ok()?;
        index
            .try_reserve(1, |&id| {
                let (s, l) = spans[id as usize];
                HASHER.hash_one(
                    std::str::from_utf8(&bytes[s as usize..(s + l) as usize]).unwrap_or(""),
                )
            })
            .ok()?;
        bytes.extend_from_slice(text.as_bytes());
        let id = spans.len() as u32;
        spans.push((start, len));
        let bytes_ref = &*bytes;
        let spans_ref = &*spans;
        index.insert_unique(hash, id, |&id| {
            let (s, l) = spans_ref[id as usize];
            HASHER.hash_one(
                std::str::from_utf8(&bytes_ref[s as usize..(s + l) as usize]).unwrap_or(""),
            )
        });
        Some(StrId(id))
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * 8 + self.index.capacity() * 4
    }
}

/// One (possibly inlined) frame of a resolved address.
#[derive(Clone, Copy, Debug)]
struct LineEntry {
    function: StrId,
    file: Option<StrId>,
    line: u32,
}

/// What the cache remembers of one address.
#[derive(Clone, Copy, Debug)]
struct CachedAddress {
    module: Option<u32>,
    lines_start: u32,
    lines_len: u32,
}

enum SymbolSource {
    NotLoaded,
    Loaded(ElfSymbols),
    Unavailable,
}

struct Symbolizer {
    modules: Vec<Module>,
    sources: Vec<SymbolSource>,
    #[cfg(feature = "dwarf")]
    dwarf: Vec<dwarf::DwarfSource>,
    strings: Strings,
    lines: PVec<LineEntry, ProfilerAlloc>,
    cache: HashMap<u64, CachedAddress, FixedState, ProfilerAlloc>,
    cache_has_lines: bool,
}

static SYMBOLIZER: Mutex<Symbolizer> = Mutex::new(Symbolizer {
    modules: Vec::new(),
    sources: Vec::new(),
    #[cfg(feature = "dwarf")]
    dwarf: Vec::new(),
    strings: Strings::new(),
    lines: PVec::new_in(ProfilerAlloc),
    cache: HashMap::with_hasher_in(HASHER, ProfilerAlloc),
    cache_has_lines: false,
});

static SOURCE_LINES: AtomicBool = AtomicBool::new(false);

/// Asks for file and line numbers (and inlined frames) from DWARF debug info in profiles taken
/// from now on. Off by default: loading DWARF for a large binary takes hundreds of MiB, which a
/// process near its memory limit cannot spare. Without the `dwarf` feature this has no effect
/// and profiles carry function names only.
///
/// ```
/// heapwatch::set_source_lines(false);
/// ```
pub fn set_source_lines(enabled: bool) {
    SOURCE_LINES.store(enabled && cfg!(feature = "dwarf"), Ordering::Relaxed);
}

fn lock() -> MutexGuard<'static, Symbolizer> {
    SYMBOLIZER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A symbolized frame handed to the snapshot builder.
pub(crate) struct NamedFrame {
    /// Index into the module list returned alongside.
    pub module: Option<usize>,
    /// Innermost first: `(function, file, line)`.
    pub lines: Vec<(String, Option<String>, u32)>,
}

/// What the builder needs of a loaded object to describe it as a pprof mapping.
pub(crate) struct ModuleInfo {
    pub path: String,
    pub build_id: String,
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
}

/// Names every address in `addresses` (return addresses minus one); also returns the modules
/// they fall in.
pub(crate) fn symbolize(addresses: &[u64]) -> (Vec<ModuleInfo>, Vec<NamedFrame>) {
    let want_lines = SOURCE_LINES.load(Ordering::Relaxed);
    let mut symbolizer = lock();
    if symbolizer.cache_has_lines != want_lines {
        symbolizer.cache.clear();
        symbolizer.lines.clear();
        symbolizer.cache_has_lines = want_lines;
    }
    if symbolizer.modules.is_empty() {
        symbolizer.reload_modules();
    }
    let mut frames = Vec::with_capacity(addresses.len());
    let mut reloaded = false;
    for &address in addresses {
        if !reloaded && symbolizer.module_of(address).is_none() {
            // A library loaded since we last looked (dlopen): refresh once per call.
            symbolizer.reload_modules();
            reloaded = true;
        }
        frames.push(symbolizer.resolve(address, want_lines));
    }
    let modules = symbolizer.modules.iter().map(module_info).collect();
    (modules, frames)
}

fn module_info(module: &Module) -> ModuleInfo {
    let code = module
        .segments
        .iter()
        .find(|s| s.executable)
        .or(module.segments.first());
    ModuleInfo {
        path: module.path.clone(),
        build_id: modules::hex(&module.build_id),
        start: code.map_or(0, |s| s.start),
        limit: code.map_or(0, |s| s.end),
        file_offset: code.map_or(0, |s| s.file_offset),
    }
}

/// Heap bytes held by the symbolizer (symbol indexes, names, address cache).
pub(crate) fn heap_bytes() -> usize {
    let symbolizer = lock();
    let sources: usize = symbolizer
        .sources
        .iter()
        .map(|source| match source {
            SymbolSource::Loaded(symbols) => symbols.heap_bytes(),
            _ => 0,
        })
        .sum();
    sources
        + symbolizer.strings.heap_bytes()
        + symbolizer.lines.capacity() * std::mem::size_of::<LineEntry>()
        + symbolizer.cache.capacity() * (8 + std::mem::size_of::<CachedAddress>())
}

/// Resolves every address of the current table now, so that a later dump near the memory
/// limit finds them cached instead of loading symbol tables when memory is scarce.
pub fn warm_symbol_cache() {
    let Some(_guard) = crate::thread_state::ProfilerGuard::enter() else {
        return;
    };
    if let Some(raw) = crate::table::raw_snapshot(crate::table::Scope::Process) {
        let mut addresses: Vec<u64> = raw
            .frames
            .iter()
            .map(|&ip| ip.saturating_sub(1) as u64)
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        let _ = symbolize(&addresses);
    }
}

impl Symbolizer {
    fn reload_modules(&mut self) {
        let fresh = modules::loaded_modules();
        let unchanged = fresh.len() == self.modules.len()
            && fresh
                .iter()
                .zip(&self.modules)
                .all(|(new, old)| new.path == old.path && new.bias == old.bias);
        if unchanged {
            return;
        }
        // Keep what was loaded for modules that are still there, in the new order.
        let mut sources = Vec::with_capacity(fresh.len());
        for module in &fresh {
            let old = self
                .modules
                .iter()
                .position(|m| m.path == module.path && m.bias == module.bias);
            let source = match old {
                Some(i) => std::mem::replace(&mut self.sources[i], SymbolSource::NotLoaded),
                None => SymbolSource::NotLoaded,
            };
            sources.push(source);
        }
        #[cfg(feature = "dwarf")]
        {
            self.dwarf = fresh
                .iter()
                .map(|_| dwarf::DwarfSource::NotLoaded)
                .collect();
        }
        self.modules = fresh;
        self.sources = sources;
        // Module indexes changed: cached entries point at old ones.
        self.cache.clear();
        self.lines.clear();
    }

    fn module_of(&self, address: u64) -> Option<usize> {
        self.modules
            .iter()
            .position(|module| module.segment_of(address).is_some())
    }

    fn resolve(&mut self, address: u64, want_lines: bool) -> NamedFrame {
        if let Some(cached) = self.cache.get(&address).copied() {
            return self.named(cached);
        }
        let module = self.module_of(address);
        let lines_start = self.lines.len() as u32;
        if let Some(index) = module {
            let file_address = address.wrapping_sub(self.modules[index].bias);
            #[cfg(feature = "dwarf")]
            if want_lines {
                self.resolve_dwarf(index, file_address);
            }
            if self.lines.len() as u32 == lines_start {
                self.resolve_elf(index, file_address);
            }
        }
        let _ = want_lines;
        let cached = CachedAddress {
            module: module.map(|m| m as u32),
            lines_start,
            lines_len: self.lines.len() as u32 - lines_start,
        };
        if self.cache.try_reserve(1).is_ok() {
            self.cache.insert(address, cached);
        }
        self.named(cached)
    }

    fn resolve_elf(&mut self, index: usize, file_address: u64) {
        if let SymbolSource::NotLoaded = self.sources[index] {
            let module = &self.modules[index];
            self.sources[index] = match module.has_file().then(|| ElfSymbols::load(&module.path)) {
                Some(Some(symbols)) => SymbolSource::Loaded(symbols),
                _ => SymbolSource::Unavailable,
            };
        }
        let SymbolSource::Loaded(symbols) = &self.sources[index] else {
            return;
        };
        let Some(raw) = symbols.lookup(file_address) else {
            return;
        };
        let name = elf::demangle(raw);
        if let Some(function) = self.strings.intern(&name) {
            self.push_line(LineEntry {
                function,
                file: None,
                line: 0,
            });
        }
    }

    #[cfg(feature = "dwarf")]
    fn resolve_dwarf(&mut self, index: usize, file_address: u64) {
        let module = &self.modules[index];
        let found = self.dwarf[index].frames(module, file_address);
        for (function, file, line) in found {
            let Some(function) = self.strings.intern(&function) else {
                continue;
            };
            let file = file.and_then(|f| self.strings.intern(&f));
            self.push_line(LineEntry {
                function,
                file,
                line,
            });
        }
    }

    fn push_line(&mut self, entry: LineEntry) {
        if self.lines.try_reserve(1).is_ok() {
            self.lines.push(entry);
        }
    }

    fn named(&self, cached: CachedAddress) -> NamedFrame {
        let start = cached.lines_start as usize;
        let entries = self
            .lines
            .get(start..start + cached.lines_len as usize)
            .unwrap_or(&[]);
        NamedFrame {
            module: cached.module.map(|m| m as usize),
            lines: entries
                .iter()
                .map(|entry| {
                    (
                        self.strings.get(entry.function).to_owned(),
                        entry.file.map(|f| self.strings.get(f).to_owned()),
                        entry.line,
                    )
                })
                .collect(),
        }
    }
}
