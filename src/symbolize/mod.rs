//! Naming the addresses of sampled stacks.
//!
//! Each address is resolved once and cached. Where the object has DWARF line tables (in the
//! object, or in a separate debug file found by build id or `.gnu_debuglink`, see
//! [`debug_file`]), an address is expanded into its chain of inlined frames, each fully
//! qualified ([`qualify`]) with its file and line ([`dwarf`], feature `dwarf`, on by default).
//! Otherwise — and always for the outermost, non-inlined frame — names come from the object's
//! ELF symbol table ([`elf`]). Memory is bounded: ~24 bytes per function symbol, the names
//! seen, and the DWARF units that stacks touched, capped (measured figures: the guide's
//! performance page, `docs/performance.md`).
//!
//! Runs on the thread that takes the snapshot, never on the allocation path.

mod elf;
pub(crate) mod leaves;
pub(crate) mod modules;
mod offline;
pub use offline::{symbolize_with_binary, symbolize_with_binary_within, SymbolizeError};
mod rebase;
pub(crate) use rebase::Rebased;

#[cfg(feature = "dwarf")]
mod debug_file;
#[cfg(feature = "dwarf")]
mod dwarf;
#[cfg(feature = "dwarf")]
mod qualify;
#[cfg(feature = "dwarf")]
pub(crate) use qualify::closures_after_callers;

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
pub(crate) struct LineEntry {
    pub(crate) function: StrId,
    pub(crate) system_name: Option<StrId>,
    pub(crate) file: Option<StrId>,
    pub(crate) line: u32,
}

impl StrId {
    /// The id as a number, for keying tables by name without comparing text.
    pub(crate) fn index(self) -> u32 {
        self.0
    }
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
    /// Whether a stack was named yet (the first naming is timed and logged).
    named_before: bool,
}

static SYMBOLIZER: crate::fork::HeldAcrossFork<Mutex<Symbolizer>> =
    crate::fork::HeldAcrossFork::new(
        crate::fork::Rank::Symbolizer,
        &FORK_HOOKS,
        Mutex::new(Symbolizer {
            modules: Vec::new(),
            sources: Vec::new(),
            #[cfg(feature = "dwarf")]
            dwarf: Vec::new(),
            strings: Strings::new(),
            lines: PVec::new_in(ProfilerAlloc),
            cache: HashMap::with_hasher_in(HASHER, ProfilerAlloc),
            cache_has_lines: false,
            named_before: false,
        }),
    );

static SOURCE_LINES: AtomicBool = AtomicBool::new(cfg!(feature = "dwarf"));

/// Whether profiles taken from now on name inlined frames, files and lines from DWARF (where
/// the binary or its separate debug file has it). On by default with the `dwarf` feature (a
/// default feature); `false` names functions from the ELF symbol table only, which holds less
/// memory but names an inlined function after the function it was inlined into. Without the
/// `dwarf` feature this has no effect.
///
/// ```
/// heapwatch::set_source_lines(true);
/// ```
pub fn set_source_lines(enabled: bool) {
    SOURCE_LINES.store(enabled && cfg!(feature = "dwarf"), Ordering::Relaxed);
}

fn lock() -> MutexGuard<'static, Symbolizer> {
    SYMBOLIZER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The symbolizer, its cache emptied if it holds names of the other kind than profiles are
/// now taken with (with or without DWARF's lines); and which kind that is.
fn lock_for_naming() -> (MutexGuard<'static, Symbolizer>, bool) {
    let want_lines = SOURCE_LINES.load(Ordering::Relaxed);
    let mut symbolizer = lock();
    if symbolizer.cache_has_lines != want_lines {
        symbolizer.cache.clear();
        symbolizer.lines.clear();
        symbolizer.cache_has_lines = want_lines;
    }
    (symbolizer, want_lines)
}

/// The symbolizer, if no other thread holds it now.
fn lock_if_free() -> Option<MutexGuard<'static, Symbolizer>> {
    match SYMBOLIZER.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

// The names already resolved, for a dump near the memory limit: read under the symbolizer's
// lock only when it is free, and never more than what is cached — nothing is loaded, parsed,
// demangled or interned through this view.

/// The symbolizer's cache, held for the time of one dump.
pub(crate) struct CachedNames {
    symbolizer: MutexGuard<'static, Symbolizer>,
}

impl CachedNames {
    /// The cache, if the symbolizer's lock is free now (a naming in progress on another thread
    /// holds it: then the dump goes without names rather than wait for a DWARF load) and the
    /// cache holds names of the kind profiles are taken with.
    pub(crate) fn if_free() -> Option<CachedNames> {
        let symbolizer = lock_if_free()?;
        let want_lines = SOURCE_LINES.load(Ordering::Relaxed);
        (symbolizer.cache_has_lines == want_lines).then_some(CachedNames { symbolizer })
    }

    /// The frames cached for a code address, innermost first; `None` if it was never named.
    pub(crate) fn lines(&self, address: u64) -> Option<&[LineEntry]> {
        let CachedAddress {
            lines_start,
            lines_len,
            ..
        } = *self.symbolizer.cache.get(&address)?;
        let start = lines_start as usize;
        self.symbolizer
            .lines
            .get(start..start + lines_len as usize)
            .filter(|lines| !lines.is_empty())
    }

    /// The text of a name.
    pub(crate) fn text(&self, id: StrId) -> &str {
        self.symbolizer.strings.get(id)
    }
}

/// Runs `walk` (a walk of the loader's list: `dl_iterate_phdr`) holding the lock the fork
/// handlers take, so no fork lands while the list's lock is held (glibc does not reset it in a
/// child). `walk` must not walk the list through heapwatch's other functions (the lock is not
/// reentrant).
#[cfg(feature = "cpu")]
pub(crate) fn walking_loader_list<T>(walk: impl FnOnce() -> T) -> T {
    let _walking = modules::walking_loader();
    walk()
}

/// The objects loaded now, described as pprof mappings describe them: what a dump written
/// without the symbolizer keeps at hand (walking the loader's list allocates a little, so the
/// watch takes it while memory is ample, not at the dump).
pub(crate) fn loaded_module_infos() -> Vec<ModuleInfo> {
    modules::loaded_modules().iter().map(module_info).collect()
}

/// Names the unnamed locations of a profile written without names — by this process, or by
/// another run of the same program — whose mappings are objects loaded here (matched by build
/// id), with this process's symbolizer; see [`rebase`].
pub(crate) fn name_by_build_id(profile: &mut crate::profile::Profile) -> Rebased {
    rebase::name_by_build_id(profile, |addresses| {
        symbolize(addresses)
            .1
            .into_iter()
            .map(|frame| frame.lines)
            .collect()
    })
}

/// Drops every symbol table, DWARF unit and cached name the symbolizer holds, giving their
/// memory back: for a small container, after the start-up naming of a predecessor's dumps.
/// Later namings load again what they need.
pub(crate) fn release_loaded() {
    let mut symbolizer = lock();
    symbolizer.modules = Vec::new();
    symbolizer.sources = Vec::new();
    #[cfg(feature = "dwarf")]
    {
        symbolizer.dwarf = Vec::new();
    }
    symbolizer.strings = Strings::new();
    symbolizer.lines = PVec::new_in(ProfilerAlloc);
    symbolizer.cache = HashMap::with_hasher_in(HASHER, ProfilerAlloc);
    crate::internal_alloc::set_symbolizer_heap_bytes(symbolizer.heap_bytes());
}

// The symbolizer's lock, held across a fork (see `fork`).
static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let symbolizer = SYMBOLIZER.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, symbolizer.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: crate::fork::GuardSlot<MutexGuard<'static, Symbolizer>> =
    crate::fork::GuardSlot::new();

/// A symbolized frame handed to the snapshot builder.
pub(crate) struct NamedFrame {
    /// Index into the module list returned alongside.
    pub module: Option<usize>,
    /// Innermost first.
    pub lines: Vec<crate::profile::Line>,
}

/// What the builder needs of a loaded object to describe it as a pprof mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    let (mut symbolizer, want_lines) = lock_for_naming();
    if symbolizer.modules.is_empty() {
        symbolizer.reload_modules();
    }
    let started = std::time::Instant::now();
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
    let first = !addresses.is_empty() && !symbolizer.named_before;
    symbolizer.named_before |= first;
    let held = symbolizer.heap_bytes();
    crate::internal_alloc::set_symbolizer_heap_bytes(held);
    drop(symbolizer);
    let held = first.then_some(held);
    if let Some(held) = held {
        // What naming costs this binary, once: operators and the guide quote it.
        tracing::info!(
            addresses = addresses.len(),
            millis = started.elapsed().as_millis() as u64,
            symbolizer_bytes = held,
            source_lines = want_lines,
            "heapwatch: first stacks named"
        );
    }
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

impl Symbolizer {
    fn heap_bytes(&self) -> usize {
        let symbolizer = self;
        let sources: usize = symbolizer
            .sources
            .iter()
            .map(|source| match source {
                SymbolSource::Loaded(symbols) => symbols.heap_bytes(),
                _ => 0,
            })
            .sum();
        #[cfg(feature = "dwarf")]
        let sources = sources
            + symbolizer
                .dwarf
                .iter()
                .map(dwarf::DwarfSource::heap_bytes)
                .sum::<usize>();
        sources
            + symbolizer.strings.heap_bytes()
            + symbolizer.lines.capacity() * std::mem::size_of::<LineEntry>()
            + symbolizer.cache.capacity() * (8 + std::mem::size_of::<CachedAddress>())
    }
}

/// Resolves every address of the current table not named yet, so that a later dump near the
/// memory limit finds them cached instead of loading symbol tables when memory is scarce.
/// Addresses already cached cost a lookup each.
pub fn warm_symbol_cache() {
    warn_once_without_dwarf();
    // The watch thread runs inside the profiler all along: then no new guard is needed (and
    // none can be had; returning there, as this once did, left the cache cold for the dump).
    let _guard = crate::thread_state::ProfilerGuard::enter();
    if let Some(raw) = crate::table::raw_snapshot(crate::table::Scope::Process) {
        warm(&code_addresses(&raw.frames));
    }
}

/// Names the addresses not cached yet, keeping only the cache.
fn warm(addresses: &[u64]) {
    let (symbolizer, _) = lock_for_naming();
    let missing: Vec<u64> = addresses
        .iter()
        .copied()
        .filter(|address| !symbolizer.cache.contains_key(address))
        .collect();
    if missing.is_empty() {
        return;
    }
    drop(symbolizer);
    let _ = symbolize(&missing);
}

/// Return addresses below this are not code (the unwinder's end-of-stack marker is 0).
const LOWEST_CODE_ADDRESS: usize = 0x1000;

/// The address to name for a return address: one byte back, inside the call instruction, so
/// it names the calling line. `None` for what cannot be code.
pub(crate) fn code_address(return_address: usize) -> Option<u64> {
    (return_address >= LOWEST_CODE_ADDRESS).then(|| return_address as u64 - 1)
}

/// The distinct code addresses of a set of return addresses, sorted.
pub(crate) fn code_addresses(return_addresses: &[usize]) -> Vec<u64> {
    let mut addresses: Vec<u64> = return_addresses
        .iter()
        .filter_map(|&ip| code_address(ip))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
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
            } else {
                // The outermost frame is the function the code was compiled into: its symbol
                // names it whole, where line-tables-only DWARF holds its bare name.
                let outermost = self.lines.len() - 1;
                if let Some((function, system_name)) = self.elf_name(index, file_address) {
                    self.lines[outermost].function = function;
                    self.lines[outermost].system_name = Some(system_name);
                }
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
        if let Some((function, system_name)) = self.elf_name(index, file_address) {
            self.push_line(LineEntry {
                function,
                system_name: Some(system_name),
                file: None,
                line: 0,
            });
        }
    }

    /// The demangled and the raw name of the symbol holding `file_address`, interned.
    fn elf_name(&mut self, index: usize, file_address: u64) -> Option<(StrId, StrId)> {
        if let SymbolSource::NotLoaded = self.sources[index] {
            self.sources[index] = match elf::load_symbols(&self.modules[index]) {
                Some(symbols) => SymbolSource::Loaded(symbols),
                None => SymbolSource::Unavailable,
            };
        }
        let SymbolSource::Loaded(symbols) = &self.sources[index] else {
            return None;
        };
        let raw = symbols.lookup(file_address)?;
        let name = elf::demangle(raw);
        let raw = String::from_utf8_lossy(raw);
        Some((self.strings.intern(&name)?, self.strings.intern(&raw)?))
    }

    #[cfg(feature = "dwarf")]
    fn resolve_dwarf(&mut self, index: usize, file_address: u64) {
        let module = &self.modules[index];
        let found = self.dwarf[index].frames(module, file_address);
        for frame in found {
            let Some(function) = self.strings.intern(&frame.name) else {
                continue;
            };
            let system_name = frame.system_name.and_then(|s| self.strings.intern(&s));
            let file = frame.file.and_then(|f| self.strings.intern(&f));
            self.push_line(LineEntry {
                function,
                system_name,
                file,
                line: frame.line,
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
                .map(|entry| crate::profile::Line {
                    function: self.strings.get(entry.function).to_owned(),
                    system_name: entry
                        .system_name
                        .map(|s| self.strings.get(s).to_owned())
                        .unwrap_or_default(),
                    file: entry.file.map(|f| self.strings.get(f).to_owned()),
                    line: entry.line,
                })
                .collect(),
        }
    }
}

/// Whether the running executable has DWARF line tables (in itself or in a separate debug file)
/// to name inlined functions with. `None` without the `dwarf` feature or when naming from DWARF
/// is switched off.
pub(crate) fn executable_has_dwarf() -> Option<bool> {
    #[cfg(feature = "dwarf")]
    if SOURCE_LINES.load(Ordering::Relaxed) {
        let main = modules::loaded_modules().into_iter().next()?;
        // Only looks: the DWARF is parsed when a stack first needs it.
        return Some(debug_file::find(&main.path, &main.build_id).is_some());
    }
    None
}

/// Logs, once per process, that inlined functions cannot be named when the executable has no
/// DWARF line tables, and what to add to `Cargo.toml`. Called by the first symbol-cache warm-up
/// (the watch's first tick, at start-up) or the first snapshot, whichever comes first.
pub(crate) fn warn_once_without_dwarf() {
    // Not a `Once`: a panic inside (a tracing layer's, say) would poison it, and every later
    // snapshot would panic with it.
    static CHECKED: AtomicBool = AtomicBool::new(false);
    if CHECKED.swap(true, Ordering::Relaxed) {
        return;
    }
    {
        // Inside the profiler already when called from a snapshot: then no new guard.
        let _guard = crate::thread_state::ProfilerGuard::enter();
        if executable_has_dwarf() == Some(false) {
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            tracing::warn!(
                executable = %exe,
                "heapwatch: no DWARF line tables in this binary (or a separate debug file): \
                 functions inlined into others cannot be named, so heap profiles blame their \
                 callers; add `[profile.release] debug = \"line-tables-only\"` to Cargo.toml"
            );
        }
    }
}

#[cfg(test)]
mod cached_names_tests {
    use super::*;

    #[inline(never)]
    fn a_named_function() -> usize {
        std::hint::black_box(3)
    }

    #[test]
    fn holds_what_was_named_and_nothing_else() {
        let address = a_named_function as *const () as usize as u64 + 1;
        let never_named = address + 0x10_0000_0000;
        let _ = super::symbolize(&[address]);
        // Another test may be naming: wait for the lock, as a dump would not.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let cached = loop {
            if let Some(cached) = CachedNames::if_free() {
                break cached;
            }
            assert!(std::time::Instant::now() < deadline, "the lock stays taken");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let lines = cached.lines(address).expect("named above");
        let outermost = lines.last().unwrap();
        assert!(
            cached.text(outermost.function).contains("a_named_function"),
            "{}",
            cached.text(outermost.function)
        );
        assert!(cached.lines(never_named).is_none());
        // Held: a second view waits for nobody.
        assert!(CachedNames::if_free().is_none());
    }
}
