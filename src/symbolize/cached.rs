//! The names already resolved, for a dump near the memory limit: read under the symbolizer's
//! lock only when it is free, and never more than what is cached — nothing is loaded, parsed,
//! demangled or interned through this view.

use super::{lock_if_free, CachedAddress, LineEntry, StrId, Symbolizer, SOURCE_LINES};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function() -> usize {
        std::hint::black_box(3)
    }

    #[test]
    fn holds_what_was_named_and_nothing_else() {
        let address = a_named_function as *const () as usize as u64 + 1;
        let never_named = address + 0x10_0000_0000;
        let _ = super::super::symbolize(&[address]);
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
