//! Fully qualified names for DWARF frames.
//!
//! With `debug = "limited"` or `"full"`, rustc gives every function DIE its mangled linkage
//! name, which demangles to the whole path (`orders::sessions::retain`). With
//! `debug = "line-tables-only"` — what most services ship — an inlined function's DIE holds its
//! bare name only (`retain`, `{closure#0}`, `from_elem<u8>`): no namespaces, no linkage name.
//! Its code's source file is known, though, and rustc names every compilation unit after its
//! crate (`src/main.rs/@/orders.1a2b3c-cgu.0`). So the crate is the one whose source root holds
//! the file, and the module path is the file's path below that root: `src/sessions.rs` of crate
//! `orders` is `orders::sessions`. Modules declared inline (`mod x { … }`) cannot be recovered
//! this way; `debug = "limited"` names them exactly. A closure's enclosing function is read off
//! the generic arguments of the frames it is inlined into ([`closure_path`]).

/// The source root of a crate compiled into the binary: `dir` holds its root file `root_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CrateRoot {
    pub dir: String,
    pub root_file: String,
    pub crate_name: String,
}

/// The crate root a rustc compilation unit describes: its `DW_AT_name`
/// (`<root file>/@/<crate>.<hash>-cgu.<n>`) and `DW_AT_comp_dir`. `None` for other units.
pub(crate) fn crate_root(unit_name: &str, comp_dir: &str) -> Option<CrateRoot> {
    let (root_path, codegen_unit) = unit_name.split_once("/@/")?;
    let crate_name = codegen_unit.split(['.', '-']).next()?;
    if crate_name.is_empty() || !root_path.ends_with(".rs") {
        return None;
    }
    let full = if root_path.starts_with('/') || comp_dir.is_empty() {
        root_path.to_owned()
    } else {
        format!("{}/{}", comp_dir.trim_end_matches('/'), root_path)
    };
    let (dir, root_file) = full.rsplit_once('/')?;
    Some(CrateRoot {
        dir: dir.to_owned(),
        root_file: root_file.to_owned(),
        crate_name: crate_name.to_owned(),
    })
}

/// The display name of a DWARF function name found in `file`: demangled if it is a linkage
/// name, else qualified by the module path of `file` among `roots`. Generic arguments of the
/// function itself are dropped (`from_elem<u8>` → `from_elem`), and closures and async bodies
/// read as in symbol names (`{{closure}}`), so that inlined copies read like symbols. They do
/// not always read the same: a method inlined reads `crate::module::method`, its out-of-line
/// copy (named from the symbol table) `crate::module::Type::method`.
pub(crate) fn display_name(raw: &str, file: Option<&str>, roots: &[CrateRoot]) -> String {
    if let Some(demangled) = super::elf::demangle_rust(raw) {
        return demangled;
    }
    let bare = normalize_bare(raw);
    // Compiler-made symbols (`__rust_alloc`, `__rdl_alloc`) and C functions live in no module.
    if bare.starts_with("__") {
        return bare;
    }
    match file.and_then(|f| module_path(f, roots)) {
        Some(path) => format!("{path}::{bare}"),
        None => bare,
    }
}

/// `from_elem<u8>` → `from_elem`; `{closure#0}`, `{async_fn#0}`, `{async_block#3}` →
/// `{{closure}}`, as symbol names spell them; other names (`{shim:vtable#0}`) unchanged.
fn normalize_bare(raw: &str) -> String {
    const CLOSURES: &[&str] = &[
        "{closure#",
        "{async_fn#",
        "{async_block#",
        "{async_closure#",
    ];
    if CLOSURES.iter().any(|c| raw.starts_with(c)) {
        return "{{closure}}".to_owned();
    }
    let without_generics = match raw.find('<') {
        Some(at) if at > 0 && raw.ends_with('>') => &raw[..at],
        _ => raw,
    };
    without_generics.to_owned()
}

/// The rustc path of a closure or async body from its bare DWARF name (`raw`, as
/// `{closure#0}`), found in the DWARF names of the frames it is inlined into (`outer`, innermost
/// first). With line tables only, the closure's own name holds no path, but the generic
/// functions that call it (iterator adapters, `poll` of a future) hold its type among their
/// generic arguments: `map_fold::{closure#0}<i32, …, orders::hold_sessions::{closure_env#0}, …>`.
/// Returns `(display name, rustc name)`, e.g. `("orders::hold_sessions::{{closure}}",
/// "orders::hold_sessions::{closure#0}")`. The type must lie in `module` (the module of the
/// closure's file) and carry the closure's kind and index; `None` when no outer frame names it,
/// or the nearest that does names two such types.
pub(crate) fn closure_path<'a>(
    raw: &str,
    module: &str,
    outer: impl IntoIterator<Item = &'a str>,
) -> Option<(String, String)> {
    let (kind, index) = raw.strip_prefix('{')?.split_once('}')?.0.split_once('#')?;
    if kind.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let needle = format!("::{{{kind}_env#{index}}}");
    let in_module = |path: &str| {
        path.strip_prefix(module)
            .is_some_and(|rest| rest.starts_with("::") && rest.len() > 2)
    };
    for name in outer {
        let mut found: Option<&str> = None;
        for (at, _) in name.match_indices(&needle) {
            // Past the last character that cannot be in a path (which may be several bytes
            // long: hostile names are not ASCII).
            let start = name[..at]
                .char_indices()
                .rev()
                .find(|&(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | ':' | '{' | '}' | '#')))
                .map_or(0, |(before, c)| before + c.len_utf8());
            let path = &name[start..at];
            if !in_module(path) {
                continue;
            }
            match found {
                Some(other) if other != path => return None,
                _ => found = Some(path),
            }
        }
        if let Some(path) = found {
            let mut display = String::new();
            for segment in path.split("::") {
                // An impl block reads `{impl#3}`: inlined methods read `crate::module::method`.
                if segment.starts_with("{impl#") {
                    continue;
                }
                if !display.is_empty() {
                    display.push_str("::");
                }
                display.push_str(&normalize_bare(segment));
            }
            return Some((
                format!("{display}::{{{{closure}}}}"),
                format!("{path}::{{{kind}#{index}}}"),
            ));
        }
    }
    None
}

/// `crate::module::path` of a source file: from the crate roots of the binary first, then from
/// the shapes of well-known source trees (the standard library, cargo's registry and git
/// checkouts), for crates whose units were not seen.
pub(crate) fn module_path(file: &str, roots: &[CrateRoot]) -> Option<String> {
    let best = roots
        .iter()
        .filter(|root| {
            file.len() > root.dir.len()
                && file.starts_with(root.dir.as_str())
                && file.as_bytes()[root.dir.len()] == b'/'
        })
        // The deepest root; in a folder holding both `lib.rs` and `main.rs`, the library,
        // where a package's modules are usually declared.
        .max_by_key(|root| (root.dir.len(), root.root_file == "lib.rs"));
    if let Some(root) = best {
        let relative = &file[root.dir.len() + 1..];
        let modules = if relative == root.root_file {
            Some(Vec::new())
        } else {
            modules_of(relative)
        };
        // A file reached by `..` from a root (std's copy of `backtrace`) is another crate's.
        if let Some(modules) = modules {
            return Some(join(&root.crate_name, &modules));
        }
    }
    // `/rustc/<hash>/library/alloc/src/vec/mod.rs` and the like, or any `<crate>/src/<path>`.
    if !file.ends_with(".rs") {
        return None;
    }
    let (before, after) = file.rsplit_once("/src/")?;
    let package = before.rsplit('/').next()?;
    let crate_name = package_crate(package);
    if crate_name.is_empty() {
        return None;
    }
    let modules = match after {
        "lib.rs" | "main.rs" => Vec::new(),
        _ => modules_of(after)?,
    };
    if !is_identifier(&crate_name) {
        return None;
    }
    Some(join(&crate_name, &modules))
}

/// `vec/mod.rs` → `[vec]`, `handler/service.rs` → `[handler, service]`; `None` when a part is
/// no Rust identifier (`..`, a build script's `out/`, a generated `foo-1.2.rs`), which is then
/// no module path.
fn modules_of(relative: &str) -> Option<Vec<&str>> {
    let relative = relative.strip_suffix(".rs")?;
    let mut parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    if parts.last() == Some(&"mod") {
        parts.pop();
    }
    parts.iter().all(|p| is_identifier(p)).then_some(parts)
}

fn is_identifier(part: &str) -> bool {
    part.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && part.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// A package folder's crate name: `axum-0.8.4` → `axum`, `tokio-util-0.7.1` → `tokio_util`.
fn package_crate(package: &str) -> String {
    let name = match package.rfind('-') {
        Some(at) if package[at + 1..].starts_with(|c: char| c.is_ascii_digit()) => &package[..at],
        _ => package,
    };
    name.replace('-', "_")
}

fn join(crate_name: &str, modules: &[&str]) -> String {
    let mut path = crate_name.to_owned();
    for module in modules {
        path.push_str("::");
        path.push_str(module);
    }
    path
}

/// With line tables only, a closure or async body that [`closure_path`] could not place reads
/// `crate::module::{{closure}}`: its DWARF name is bare and the function it belongs to is not
/// recorded. But a closure is nearly always
/// run from its own function, through std's adapters (`iter().map(…).collect()`): so, going out
/// from the closure, the first frame outside the standard library whose code is in the same
/// source file is taken as its parent, and the closure is named after it
/// (`orders::hold_sessions::{{closure}}`). No such frame (an async body polled by a framework):
/// the name stays. Names from symbols or linkage names (a `system_name`) are left alone.
pub(crate) fn closures_after_callers(profile: &mut crate::profile::Profile) {
    let is_unparented = |line: &crate::profile::Line| {
        line.system_name.is_empty() && line.function.ends_with("::{{closure}}")
    };
    let mut done = std::collections::HashSet::new();
    for sample in 0..profile.samples.len() {
        // (location, line) pairs of the stack, outermost first, so parents are named first.
        let frames: Vec<(usize, usize)> = profile.samples[sample]
            .locations
            .iter()
            .rev()
            .flat_map(|&l| {
                let count = profile.locations.get(l).map_or(0, |loc| loc.lines.len());
                (0..count).rev().map(move |k| (l, k))
            })
            .collect();
        for (at, &(l, k)) in frames.iter().enumerate() {
            let line = &profile.locations[l].lines[k];
            if !is_unparented(line) || !done.insert((l, k)) {
                continue;
            }
            let Some(file) = line.file.clone() else {
                continue;
            };
            let parent = frames[..at].iter().rev().find_map(|&(pl, pk)| {
                let candidate = &profile.locations[pl].lines[pk];
                if crate::plumbing::is_std_function(&candidate.function) {
                    return None;
                }
                Some(
                    (candidate.file.as_deref() == Some(file.as_str()))
                        .then(|| candidate.function.clone()),
                )
            });
            if let Some(Some(parent)) = parent {
                profile.locations[l].lines[k].function = format!("{parent}::{{{{closure}}}}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<CrateRoot> {
        vec![
            crate_root(
                "src/main.rs/@/orders_svc.db0fb3209eba74ed-cgu.0",
                "/srv/orders",
            )
            .unwrap(),
            crate_root(
                "examples/orders_service/main.rs/@/orders_service.5f1e-cgu.03",
                "/work/heapwatch",
            )
            .unwrap(),
            crate_root("src/lib.rs/@/heapwatch.77aa-cgu.1", "/work/heapwatch").unwrap(),
        ]
    }

    #[test]
    fn reads_rustc_unit_names() {
        let root = crate_root("src/main.rs/@/orders_svc.db0fb3209eba74ed-cgu.0", "/srv/o").unwrap();
        assert_eq!(root.dir, "/srv/o/src");
        assert_eq!(root.root_file, "main.rs");
        assert_eq!(root.crate_name, "orders_svc");
        assert_eq!(crate_root("crt1.c", "/build"), None);
        assert_eq!(crate_root("../sysdeps/x86_64/start.S", "/b"), None);
    }

    #[test]
    fn closures_are_placed_by_the_generic_arguments_of_their_callers() {
        let adapter = "{closure#0}<i32, alloc::vec::Vec<u8, alloc::alloc::Global>, (), \
            source_lines::allocate_on_a_known_line::{closure_env#0}, core::iter::traits::\
            iterator::Iterator::for_each::call::{closure_env#0}<alloc::vec::Vec<u8>>>";
        let fold = "fold<core::ops::range::Range<i32>, source_lines::allocate_on_a_known_line::\
            {closure_env#0}>";
        assert_eq!(
            closure_path("{closure#0}", "source_lines", [adapter, fold]),
            Some((
                "source_lines::allocate_on_a_known_line::{{closure}}".to_owned(),
                "source_lines::allocate_on_a_known_line::{closure#0}".to_owned()
            ))
        );
        // The index and the kind must match, and the type must be of the closure's module.
        assert_eq!(closure_path("{closure#1}", "source_lines", [adapter]), None);
        assert_eq!(
            closure_path("{async_fn#0}", "source_lines", [adapter]),
            None
        );
        assert_eq!(closure_path("{closure#0}", "orders", [adapter, fold]), None);
        assert_eq!(closure_path("{closure#0}", "source", [adapter]), None);
        // A character of several bytes just before the path (the hostile DWARF test found a
        // panic on a byte index inside '\u{fffd}').
        assert_eq!(
            closure_path(
                "{closure#0}",
                "orders",
                ["map<\u{fffd}orders::main::{closure_env#0}>"]
            )
            .map(|(_, system)| system),
            Some("orders::main::{closure#0}".to_owned())
        );
        // Async bodies, closures in closures and in impl blocks.
        assert_eq!(
            closure_path(
                "{async_fn#0}",
                "orders::handlers",
                ["poll<orders::handlers::{impl#2}::create::{async_fn_env#0}>"]
            )
            .map(|(display, _)| display),
            Some("orders::handlers::create::{{closure}}".to_owned())
        );
        assert_eq!(
            closure_path(
                "{closure#1}",
                "orders",
                ["call_once<orders::main::{closure#0}::{closure_env#1}, ()>"]
            ),
            Some((
                "orders::main::{{closure}}::{{closure}}".to_owned(),
                "orders::main::{closure#0}::{closure#1}".to_owned()
            ))
        );
        // Two candidates in the nearest frame that names any: not guessed.
        assert_eq!(
            closure_path(
                "{closure#0}",
                "orders",
                [
                    "zip<orders::a::{closure_env#0}, orders::b::{closure_env#0}>",
                    fold
                ]
            ),
            None
        );
        // Hostile names: never a panic.
        for raw in [
            "{",
            "{#}",
            "{closure#}",
            "{closure#x}",
            "}{",
            "{closure#0",
            "{é#0}",
        ] {
            assert_eq!(
                closure_path(raw, "orders", [adapter, "::{closure_env#0}"]),
                None
            );
        }
        assert_eq!(
            closure_path("{closure#0}", "orders", ["orders::{closure_env#0}"]),
            None
        );
    }

    #[test]
    fn qualifies_bare_names_by_their_file() {
        let roots = roots();
        let name = |raw, file| display_name(raw, Some(file), &roots);
        assert_eq!(
            name("retain_session_blob", "/srv/orders/src/sessions.rs"),
            "orders_svc::sessions::retain_session_blob"
        );
        assert_eq!(
            name("{async_fn#0}", "/srv/orders/src/main.rs"),
            "orders_svc::{{closure}}"
        );
        assert_eq!(
            name(
                "retain_session_blob",
                "/work/heapwatch/examples/orders_service/sessions.rs"
            ),
            "orders_service::sessions::retain_session_blob"
        );
        // heapwatch's own src/ is not mistaken for the example's crate, nor the reverse.
        assert_eq!(
            name("track_alloc", "/work/heapwatch/src/alloc.rs"),
            "heapwatch::alloc::track_alloc"
        );
        assert_eq!(
            name(
                "from_elem<u8>",
                "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/vec/spec_from_elem.rs"
            ),
            "alloc::vec::spec_from_elem::from_elem"
        );
        assert_eq!(
            name(
                "call<F, S>",
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/axum-0.8.9/src/handler/mod.rs"
            ),
            "axum::handler::call"
        );
        assert_eq!(
            name(
                "poll",
                "/root/.cargo/registry/src/x/tokio-util-0.7.1/src/lib.rs"
            ),
            "tokio_util::poll"
        );
        assert_eq!(display_name("poll", None, &roots), "poll");
        // Paths that are no module path are left bare rather than made up.
        let mut with_std = roots.clone();
        with_std.push(crate_root("library/std/src/lib.rs/@/std.1-cgu.0", "/rustc/abc").unwrap());
        assert_eq!(
            display_name(
                "fmt",
                Some("/rustc/abc/library/std/src/../../backtrace/src/print.rs"),
                &with_std
            ),
            "backtrace::print::fmt",
            "a file reached by `..` from std's root is another crate's"
        );
        assert_eq!(
            display_name("fmt", Some("/rustc/abc/library/std/src/../x.rs"), &with_std),
            "fmt"
        );
        assert_eq!(
            name("ZSTD_compress", "/root/.cargo/registry/src/i/zstd-sys-2.0.9+zstd.1.5.5/zstd/lib/compress/zstd_compress.c"),
            "ZSTD_compress"
        );
        assert_eq!(
            name(
                "generated",
                "/usr/src/app/target/release/build/x-1a2b/out/gen.rs"
            ),
            "generated"
        );
        assert_eq!(
            name("{shim:vtable#0}", "/srv/orders/src/main.rs"),
            "orders_svc::{shim:vtable#0}"
        );
        assert_eq!(
            name("__rust_alloc", "/srv/orders/src/main.rs"),
            "__rust_alloc",
            "the allocator shim rustc puts in the crate that declares #[global_allocator]"
        );
    }

    #[test]
    fn closures_are_named_after_the_function_that_runs_them() {
        use crate::profile::{Line, Location, Profile, Sample};
        let line = |function: &str, file: &str, system_name: &str| Line {
            function: function.into(),
            system_name: system_name.into(),
            file: Some(file.into()),
            line: 1,
        };
        let mut profile = Profile {
            samples: vec![Sample {
                locations: vec![0, 1],
                values: [1, 1, 1, 1],
                labels: Vec::new(),
            }],
            locations: vec![
                Location {
                    address: 1,
                    mapping: None,
                    lines: vec![
                        line("svc::{{closure}}", "/s/src/main.rs", ""),
                        line("core::iter::adapters::map::{{closure}}", "/r/map.rs", ""),
                        line("alloc::vec::from_iter", "/r/vec.rs", ""),
                    ],
                },
                Location {
                    address: 2,
                    mapping: None,
                    lines: vec![line(
                        "svc::hold_sessions",
                        "/s/src/main.rs",
                        "_ZN3svc13hold",
                    )],
                },
            ],
            ..Profile::default()
        };
        closures_after_callers(&mut profile);
        let names: Vec<&str> = profile.locations[0]
            .lines
            .iter()
            .map(|l| l.function.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "svc::hold_sessions::{{closure}}",
                "core::iter::adapters::map::{{closure}}",
                "alloc::vec::from_iter"
            ],
            "std's own closures keep their names; the program's is named after its caller"
        );
        // Run by another file's code (a framework polling an async body): left as it is.
        profile.locations[1].lines[0].file = Some("/axum/src/handler.rs".into());
        profile.locations[0].lines[0].function = "svc::{{closure}}".into();
        closures_after_callers(&mut profile);
        assert_eq!(profile.locations[0].lines[0].function, "svc::{{closure}}");
    }

    #[test]
    fn linkage_names_are_demangled_whole() {
        assert_eq!(
            display_name(
                "_ZN10orders_svc8sessions19retain_session_blob17h68b1805483636ceeE",
                Some("/elsewhere.rs"),
                &[]
            ),
            "orders_svc::sessions::retain_session_blob"
        );
    }
}
