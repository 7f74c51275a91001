//! Function names from an ELF file's symbol table: the cheap, bounded way to name addresses.
//!
//! The file is memory-mapped, so only the pages of `.symtab`/`.strtab` that are read become
//! resident, and they are clean file pages the kernel can drop under pressure. What stays on the
//! heap is one 24-byte entry per function symbol, sorted by address; names are read from the
//! mapping when an address is resolved. Full DWARF is never loaded on this path.

use super::modules::Module;
use crate::internal_alloc::ProfilerAlloc;
use allocator_api2::vec::Vec as PVec;
use memmap2::Mmap;
use object::{Object, ObjectSymbol, SymbolKind};
use std::fs::File;

#[derive(Clone, Copy)]
struct FunctionSymbol {
    address: u64,
    size: u64,
    name_offset: u32,
    name_len: u32,
}

/// The function symbols of one ELF file.
pub(crate) struct ElfSymbols {
    map: Mmap,
    symbols: PVec<FunctionSymbol, ProfilerAlloc>,
    /// Whether the names come from `.symtab` (every function) rather than `.dynsym` (the
    /// exported ones, all a stripped object keeps).
    complete: bool,
}

impl ElfSymbols {
    /// Maps `path` and indexes its function symbols (`.symtab`, or `.dynsym` when stripped).
    /// `None` if the file cannot be read or parsed, or names no functions.
    pub(crate) fn load(path: &str) -> Option<Self> {
        let file = File::open(path).ok()?;
        // SAFETY: the mapping is read-only and private. If the file were truncated while mapped,
        // reads past the new end would fault; executables and libraries in use are not
        // truncated in place (installers replace them by rename), the risk every symbolizer
        // that maps binaries accepts.
        let map = unsafe { Mmap::map(&file) }.ok()?;
        Self::from_map(map)
    }

    /// Indexes the function symbols of an ELF file already mapped (a debug file found and
    /// checked by `debug_file`, used as it was checked rather than opened again by name).
    pub(crate) fn from_map(map: Mmap) -> Option<Self> {
        let elf = object::File::parse(&*map).ok()?;
        let base = map.as_ptr() as usize;
        let mut symbols = PVec::new_in(ProfilerAlloc);
        index_functions(&mut symbols, base, elf.symbols());
        let complete = !symbols.is_empty();
        if symbols.is_empty() {
            index_functions(&mut symbols, base, elf.dynamic_symbols());
        }
        if symbols.is_empty() {
            return None;
        }
        // Prefer the sized symbol where several share an address (aliases).
        symbols.sort_unstable_by_key(|s| (s.address, std::cmp::Reverse(s.size)));
        symbols.dedup_by_key(|s| s.address);
        symbols.shrink_to_fit();
        Some(ElfSymbols {
            map,
            symbols,
            complete,
        })
    }

    /// Whether every function is named (a `.symtab`), not only the exported ones.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// The raw (mangled) name of the function containing the file address `address`.
    pub(crate) fn lookup(&self, address: u64) -> Option<&[u8]> {
        let after = self.symbols.partition_point(|s| s.address <= address);
        let symbol = self.symbols.get(after.checked_sub(1)?)?;
        // A symbol without a size (hand-written assembly) covers up to the next symbol.
        let inside = symbol.size == 0 || address < symbol.address.saturating_add(symbol.size);
        if !inside {
            return None;
        }
        let start = symbol.name_offset as usize;
        self.map.get(start..start + symbol.name_len as usize)
    }

    /// Heap bytes held by the index (the mapping itself is file-backed and not counted).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.symbols.capacity() * std::mem::size_of::<FunctionSymbol>()
    }
}

/// Appends the defined function symbols of `iter`, recording name offsets relative to `base`
/// (the start of the mapping the names are slices of).
fn index_functions<'data, S: ObjectSymbol<'data>>(
    symbols: &mut PVec<FunctionSymbol, ProfilerAlloc>,
    base: usize,
    iter: impl Iterator<Item = S>,
) {
    for symbol in iter {
        if symbol.kind() != SymbolKind::Text || !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name_bytes() else {
            continue;
        };
        if name.is_empty() || symbols.try_reserve(1).is_err() {
            continue;
        }
        // Names are slices of the mapping; keep their offsets, not copies.
        let name_offset = (name.as_ptr() as usize).wrapping_sub(base);
        let (Ok(name_offset), Ok(name_len)) =
            (u32::try_from(name_offset), u32::try_from(name.len()))
        else {
            continue;
        };
        symbols.push(FunctionSymbol {
            address: symbol.address(),
            size: symbol.size(),
            name_offset,
            name_len,
        });
    }
}

/// Demangles a Rust (legacy or v0) or leaves any other name as it is, without the hash suffix.
pub(crate) fn demangle(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    demangle_rust(&text).unwrap_or_else(|| text.into_owned())
}

/// The demangled form, without the hash suffix, of a Rust symbol name (legacy or v0); `None`
/// for any other name.
pub(crate) fn demangle_rust(raw: &str) -> Option<String> {
    rustc_demangle::try_demangle(raw)
        .ok()
        .map(|demangled| format!("{demangled:#}"))
}

/// The symbol table of a module: its own, or — when it was stripped to its exported symbols —
/// the full one of its separate debug file (`objcopy --only-keep-debug` keeps `.symtab`).
pub(crate) fn load_symbols(module: &Module) -> Option<ElfSymbols> {
    if !module.has_file() {
        return None;
    }
    let own = ElfSymbols::load(&module.path);
    if own.as_ref().is_some_and(ElfSymbols::is_complete) {
        return own;
    }
    #[cfg(feature = "dwarf")]
    if let Some(debug) = super::debug_file::find(&module.path, &module.build_id) {
        let from_debug = ElfSymbols::from_map(debug.map);
        if from_debug.as_ref().is_some_and(ElfSymbols::is_complete) {
            return from_debug;
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_name() -> usize {
        std::hint::black_box(7)
    }

    #[test]
    fn names_a_function_of_this_binary() {
        let modules = super::super::modules::loaded_modules();
        let addr = a_function_with_a_name as *const () as usize as u64 + 1;
        let module = modules
            .iter()
            .find(|m| m.segment_of(addr).is_some())
            .unwrap();
        let symbols = ElfSymbols::load(&module.path).expect("symbols of the test binary");
        let raw = symbols.lookup(addr - module.bias).expect("a symbol");
        assert!(
            demangle(raw).ends_with("a_function_with_a_name"),
            "{}",
            demangle(raw)
        );
        assert!(symbols.heap_bytes() > 0);
    }

    #[test]
    fn unreadable_files_give_none() {
        assert!(ElfSymbols::load("/nonexistent/heapwatch").is_none());
        assert!(ElfSymbols::load("/proc/self/status").is_none());
    }
}
