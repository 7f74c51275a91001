//! Which frames of a stack are allocation plumbing rather than the code that asked for memory.
//!
//! Two lists, two uses:
//! - **Machinery** is cut from the leaf end of every stack in every profile: heapwatch's own
//!   frames (inlined or not), the unwinder, the global-allocator shims, and the standard
//!   library's allocating helpers (`Vec::with_capacity`, `vec![x; n]`, `RawVec` growth,
//!   `String::push_str`, std's `HashMap` over hashbrown…). The leaf is then the program's own
//!   function, as Go's heap profiles list the caller of `make`, and `go tool pprof -top`
//!   names it first. This module only says which names are machinery; the cutting is
//!   [`symbolize::leaves`](crate::symbolize::leaves)'s, once frames have names.
//! - **Plumbing** ([`Plumbing`], configurable) is skipped on top of that wherever heapwatch
//!   names *one* culprit — a report's top sites, leak suspects, WARN lines, dump summaries,
//!   [`leak_check`](crate::leak_check) failures: libraries that allocate for their callers
//!   (collections, buffers) are passed over for the first frame that is not one of them. The
//!   stacks in profiles keep those frames.

use std::sync::{PoisonError, RwLock};

/// Innermost frames that are heapwatch or the allocator's entry points.
const MACHINERY_PREFIXES: &[&str] = &[
    "heapwatch::alloc::",
    "<heapwatch::alloc::",
    "heapwatch::thread_state::",
    "heapwatch::sampler::",
    "heapwatch::counters::",
    "heapwatch::filter::",
    "heapwatch::early_wake::",
    "heapwatch::stack::",
    "heapwatch::table::",
    "heapwatch::measure::site_log::",
    "backtrace::",
    "<backtrace::",
    "_Unwind_",
    "__rust_alloc",
    "__rust_realloc",
    "__rust_alloc_zeroed",
    "__rustc::",
    "__rg_",
    "__rdl_",
    "<tikv_jemallocator::",
    "tikv_jemallocator::",
    "<std::alloc::System as",
];

/// Crates of the standard library (and the hash table under std's `HashMap`).
const STD_CRATES: &[&str] = &["alloc::", "core::", "std::", "hashbrown::"];

/// Whether a frame named `name` is allocation machinery, cut from the leaf end of stacks.
pub(crate) fn is_machinery(name: &str) -> bool {
    MACHINERY_PREFIXES.iter().any(|p| name.starts_with(p)) || is_std_function(name)
}

/// `alloc::vec::Vec<T>::push`, `<alloc::string::String as core::fmt::Write>::write_str`, or
/// `<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem` (a std trait on a primitive
/// or generic type) — but not `<myapp::Cache as core::clone::Clone>::clone`, whose code is the
/// program's.
pub(crate) fn is_std_function(name: &str) -> bool {
    starts_with_any(name, STD_CRATES)
}

/// Whether `name`'s code belongs to a crate whose path starts with one of `prefixes`, looking
/// through `<T as Trait>::` to the type whose code it is (or, for a trait of that crate on a
/// primitive or generic type, the trait).
fn starts_with_any<S: AsRef<str>>(name: &str, prefixes: &[S]) -> bool {
    let is_in = |path: &str| prefixes.iter().any(|c| path.starts_with(c.as_ref()));
    let Some(qualified) = name.strip_prefix('<') else {
        return is_in(name);
    };
    let Some((self_type, rest)) = qualified.split_once(" as ") else {
        return is_in(qualified);
    };
    let self_type = self_type.trim_start_matches(['&', '*', '[', '(']);
    let self_type = self_type
        .strip_prefix("mut ")
        .or_else(|| self_type.strip_prefix("const "))
        .unwrap_or(self_type);
    is_in(self_type) || (!self_type.contains("::") && is_in(rest))
}

/// Libraries skipped when heapwatch names one culprit for a stack: always the machinery (heapwatch,
/// the allocator shims, `std`, `core`, `alloc` and `hashbrown`), and by default the collections
/// and buffers that allocate for their callers (`indexmap`, `smallvec`, `bytes`). Add your own (a serializer, an
/// internal pool) with [`with`](Self::with) and [`set_plumbing`], or the `HEAPWATCH_PLUMBING`
/// environment variable (comma-separated path prefixes, read once).
///
/// ```
/// let plumbing = heapwatch::Plumbing::default().with("serde_json::");
/// assert!(plumbing.contains("serde_json::de::from_str"));
/// assert!(plumbing.contains("alloc::vec::Vec<T,A>::push"));
/// assert!(!plumbing.contains("orders::sessions::retain"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbing {
    prefixes: Vec<String>,
}

impl Default for Plumbing {
    fn default() -> Self {
        Plumbing {
            prefixes: ["indexmap::", "smallvec::", "bytes::"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

impl Plumbing {
    /// The machinery alone: every library outside the standard one may be a culprit.
    pub fn none() -> Self {
        Plumbing {
            prefixes: Vec::new(),
        }
    }

    /// Adds a path prefix (`"serde_json::"`, `"my_pool::"`).
    pub fn with(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// The path prefixes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether the function `name` is plumbing.
    pub fn contains(&self, name: &str) -> bool {
        is_machinery(name) || starts_with_any(name, &self.prefixes)
    }
}

/// Held across a fork (see `fork`).
static PLUMBING: crate::fork::HeldAcrossFork<RwLock<Option<Plumbing>>> =
    crate::fork::HeldAcrossFork::new(crate::fork::Rank::Plumbing, &FORK_HOOKS, RwLock::new(None));

static FORK_HOOKS: crate::fork::Hooks = crate::fork::Hooks {
    take: |forking| {
        let list = PLUMBING.for_fork(forking).write();
        HELD_FOR_FORK.keep(forking, list.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: crate::fork::GuardSlot<
    std::sync::RwLockWriteGuard<'static, Option<Plumbing>>,
> = crate::fork::GuardSlot::new();

/// Sets the libraries skipped when heapwatch names a culprit (see [`Plumbing`]).
///
/// ```
/// heapwatch::set_plumbing(heapwatch::Plumbing::default().with("serde_json::"));
/// assert!(heapwatch::plumbing().contains("serde_json::to_vec"));
/// # heapwatch::set_plumbing(heapwatch::Plumbing::default());
/// ```
pub fn set_plumbing(plumbing: Plumbing) {
    *PLUMBING.write().unwrap_or_else(PoisonError::into_inner) = Some(plumbing);
}

/// The libraries skipped when heapwatch names a culprit: what [`set_plumbing`] set, else the
/// default plus `HEAPWATCH_PLUMBING`.
pub fn plumbing() -> Plumbing {
    if let Some(set) = PLUMBING
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        return set.clone();
    }
    let mut configured = Plumbing::default();
    if let Ok(list) = std::env::var("HEAPWATCH_PLUMBING") {
        for prefix in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            configured = configured.with(prefix);
        }
    }
    PLUMBING
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert(configured)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_frames_are_told_from_the_program() {
        for std in [
            "alloc::vec::Vec<T,A>::with_capacity",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<alloc::string::String as core::fmt::Write>::write_str",
            "<&mut [u8] as core::fmt::Debug>::fmt",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
            "<T as alloc::borrow::ToOwned>::to_owned",
        ] {
            assert!(is_std_function(std), "{std}");
        }
        for program in [
            "leaky_service::leak_session_cache",
            "<myapp::Cache as core::clone::Clone>::clone",
            "<core_utils::Thing as myapp::Make>::make",
            "allocator::pool::grow",
            "main",
        ] {
            assert!(!is_std_function(program), "{program}");
        }
    }

    #[test]
    fn heapwatch_and_the_shims_are_machinery() {
        for name in [
            "heapwatch::alloc::track_alloc",
            "<heapwatch::alloc::Alloc<A> as core::alloc::global::GlobalAlloc>::alloc",
            "__rust_alloc",
            "__rustc::__rust_alloc_zeroed",
            "__rdl_alloc",
            "alloc::alloc::alloc",
            "alloc::raw_vec::RawVecInner<A>::grow_amortized",
        ] {
            assert!(is_machinery(name), "{name}");
        }
        assert!(!is_machinery("orders::sessions::retain_session_blob"));
        assert!(!is_machinery("heapwatch_user::handler"));
    }

    #[test]
    fn plumbing_is_configurable() {
        let plumbing = Plumbing::default();
        assert!(plumbing.contains("bytes::bytes_mut::BytesMut::reserve_inner"));
        assert!(plumbing.contains("<indexmap::map::IndexMap<K,V,S> as x::Y>::insert"));
        assert!(!plumbing.contains("serde_json::de::from_str"));
        assert!(plumbing
            .clone()
            .with("serde_json::")
            .contains("serde_json::de::from_str"));
        assert!(!Plumbing::none().contains("bytes::Bytes::copy_from_slice"));
        assert!(Plumbing::none().contains("heapwatch::alloc::track_alloc"));
    }
}
