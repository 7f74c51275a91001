//! Fails on an import cycle between the files of a crate's `src/`.
//!
//! Each file is a node. A file depends on another when one of its `mod` declarations, `use`
//! lines or paths in code (`crate::…`, `super::…`, `self::…`, or a child module's name) names an
//! item that the other file defines or re-exports: the path is resolved to the longest module
//! prefix that is a file. A `crate::name!` call names the file that writes `macro_rules! name`
//! (an exported macro sits at the root wherever it is written); `$crate::…` paths in a macro's
//! body are its callers' dependencies, not its file's. Comments and string literals are skipped. The crate roots are
//! `src/lib.rs` and each `src/bin/<name>/main.rs` (or `src/bin/<name>.rs`); a binary's paths
//! into the library (`heapwatch::…`) cannot close a cycle and are not followed.
//!
//! ```text
//! rustc --edition 2021 -O scripts/import_cycles.rs -o target/import_cycles
//! target/import_cycles src            # exit 1 and the cycles when there are any
//! target/import_cycles src --graph    # every edge, one `from -> to` a line
//! ```
//!
//! Run by `scripts/test.sh`; `rustc --test` runs its own tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let src = PathBuf::from(args.first().map_or("src", String::as_str));
    let graph_wanted = args.iter().any(|a| a == "--graph");
    let graph = match Graph::of_src(&src) {
        Ok(graph) => graph,
        Err(e) => {
            eprintln!("import_cycles: cannot read {}: {e}", src.display());
            std::process::exit(2);
        }
    };
    if graph_wanted {
        for (from, tos) in &graph.edges {
            for (to, why) in tos {
                println!("{from} -> {to}    ({why})");
            }
        }
    }
    let cycles = graph.cycles();
    if cycles.is_empty() {
        println!(
            "import_cycles: {} files, {} edges, no cycle",
            graph.files.len(),
            graph.edges.values().map(BTreeMap::len).sum::<usize>()
        );
        return;
    }
    eprintln!(
        "import_cycles: {} import cycle(s) between files:",
        cycles.len()
    );
    for cycle in &cycles {
        eprintln!("  cycle of {} files:", cycle.len());
        let members: BTreeSet<&String> = cycle.iter().collect();
        for from in cycle {
            for (to, why) in &graph.edges[from] {
                if members.contains(to) {
                    eprintln!("    {from} -> {to}    ({why})");
                }
            }
        }
    }
    std::process::exit(1);
}

/// Files (by path relative to `src/`) and, for each, the files it depends on with one path
/// that shows why.
#[derive(Debug, Default)]
struct Graph {
    files: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

/// One crate: its root file and the file of each module path.
struct Crate {
    modules: BTreeMap<Vec<String>, String>,
}

impl Graph {
    fn of_src(src: &Path) -> std::io::Result<Graph> {
        let mut sources = BTreeMap::new();
        collect(src, src, &mut sources)?;
        Ok(Graph::of_sources(&sources))
    }

    /// `sources`: file path relative to `src/` → its text.
    fn of_sources(sources: &BTreeMap<String, String>) -> Graph {
        let mut graph = Graph::default();
        for root in sources.keys().filter(|f| is_crate_root(f)) {
            let krate = Crate::discover(root, sources);
            for (module, file) in &krate.modules {
                graph.files.insert(file.clone());
                let text = &sources[file];
                for (path, why) in references(module, &strip(text)) {
                    let target = match macro_called(&path) {
                        Some(name) => exported_macro_file(sources, &krate, name),
                        None => krate.resolve(&path),
                    };
                    if let Some(target) = target {
                        if target != *file {
                            graph
                                .edges
                                .entry(file.clone())
                                .or_default()
                                .entry(target)
                                .or_insert(why);
                        }
                    }
                }
                graph.edges.entry(file.clone()).or_default();
            }
        }
        graph
    }

    /// The strongly connected components with more than one file (Tarjan).
    fn cycles(&self) -> Vec<Vec<String>> {
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            let i = s.index.len();
            s.index.insert(v, i);
            s.low.insert(v, i);
            s.stack.push(v);
            s.on_stack.insert(v);
            if let Some(tos) = s.graph.edges.get(v) {
                for w in tos.keys() {
                    if !s.index.contains_key(w.as_str()) {
                        visit(s, w);
                        let lw = s.low[w.as_str()];
                        let lv = s.low.get_mut(v).expect("visited");
                        *lv = (*lv).min(lw);
                    } else if s.on_stack.contains(w.as_str()) {
                        let iw = s.index[w.as_str()];
                        let lv = s.low.get_mut(v).expect("visited");
                        *lv = (*lv).min(iw);
                    }
                }
            }
            if s.low[v] == s.index[v] {
                let mut component = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    s.found.push(component);
                }
            }
        }
        let mut state = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for file in &self.files {
            if !state.index.contains_key(file.as_str()) {
                visit(&mut state, file);
            }
        }
        state.found
    }
}

fn collect(base: &Path, dir: &Path, sources: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(base, &path, sources)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(base).expect("under base");
            sources.insert(
                relative.to_string_lossy().into_owned(),
                std::fs::read_to_string(&path)?,
            );
        }
    }
    Ok(())
}

fn is_crate_root(file: &str) -> bool {
    file == "lib.rs"
        || file == "main.rs"
        || (file.starts_with("bin/")
            && (file.matches('/').count() == 1 || file.ends_with("/main.rs")))
}

impl Crate {
    /// Follows `mod name;` declarations from the root to the files they load.
    fn discover(root: &str, sources: &BTreeMap<String, String>) -> Crate {
        let mut modules = BTreeMap::new();
        let mut pending = vec![(Vec::<String>::new(), root.to_owned())];
        while let Some((module, file)) = pending.pop() {
            let text = strip(&sources[&file]);
            // Children of `a/mod.rs`, `lib.rs` and `main.rs` live in `a/`; of `a/b.rs` in `a/b/`.
            let dir = match file.rsplit_once('/') {
                _ if file == root && !file.starts_with("bin/") => String::new(),
                Some((dir, name)) if name == "mod.rs" || file == root => format!("{dir}/"),
                Some((dir, name)) => format!("{dir}/{}/", name.trim_end_matches(".rs")),
                None => format!("{}/", file.trim_end_matches(".rs")),
            };
            for child in declared_modules(&text) {
                let candidates = [format!("{dir}{child}.rs"), format!("{dir}{child}/mod.rs")];
                if let Some(found) = candidates.iter().find(|c| sources.contains_key(*c)) {
                    let mut path = module.clone();
                    path.push(child);
                    pending.push((path, found.clone()));
                }
            }
            modules.insert(module, file);
        }
        Crate { modules }
    }

    /// The file that defines the longest module prefix of `path` (absolute, from the root).
    fn resolve(&self, path: &[String]) -> Option<String> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.modules.get(&path[..n]).cloned())
    }
}

/// Names of `mod name;` declarations (not inline `mod name { … }` blocks) at any depth.
fn declared_modules(text: &str) -> Vec<String> {
    let tokens = tokenize(text);
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t == "mod" && tokens.get(i + 2).is_some_and(|t| t == ";") {
            if let Some(name) = tokens.get(i + 1).filter(|n| is_ident(n)) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Every module path the file refers to, absolute (from the crate root), each with the source
/// text that names it.
fn references(module: &[String], text: &str) -> Vec<(Vec<String>, String)> {
    let tokens = tokenize(text);
    let children: BTreeSet<String> = declared_modules(text).into_iter().collect();
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) shift what `self` and `super` mean.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let mut here: Vec<String> = module.to_vec();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        if t == "mod" && tokens.get(i + 2).is_some_and(|t| t == "{") {
            inline.push((tokens[i + 1].clone(), depth));
            i += 2;
            continue;
        }
        if t == "mod" && tokens.get(i + 2).is_some_and(|t| t == ";") {
            let mut path = here.clone();
            path.push(tokens[i + 1].clone());
            out.push((path, format!("mod {}", tokens[i + 1])));
            i += 3;
            continue;
        }
        if t == "use" {
            let end = tokens[i..]
                .iter()
                .position(|t| t == ";")
                .map_or(tokens.len(), |p| i + p);
            for path in expand_use(&tokens[i + 1..end]) {
                if let Some(abs) = absolute(&here, &children, &path) {
                    out.push((abs, format!("use {}", path.join("::"))));
                }
            }
            i = end + 1;
            continue;
        }
        // A path in code: a run of `ident :: ident :: …`.
        if is_ident(t) && tokens.get(i + 1).is_some_and(|t| t == "::") {
            let preceded_by_colons = i > 0 && tokens[i - 1] == "::";
            let mut path = vec![t.to_owned()];
            let mut j = i + 1;
            while tokens.get(j).is_some_and(|t| t == "::")
                && tokens.get(j + 1).is_some_and(|t| is_ident(t))
            {
                path.push(tokens[j + 1].clone());
                j += 2;
            }
            let macro_call = tokens.get(j).is_some_and(|t| t == "!");
            // `$crate::…` in a `macro_rules!` body is resolved where the macro is expanded:
            // a dependency of its callers, not of the file that writes it.
            let in_macro_body = i > 0 && tokens[i - 1] == "$";
            let counted = !preceded_by_colons && !in_macro_body;
            if counted && macro_call && path.len() == 2 && path[0] == "crate" {
                out.push((
                    vec![MACRO_CALL.to_owned(), path[1].clone()],
                    format!("{}!", path.join("::")),
                ));
            } else if counted {
                if let Some(abs) = absolute(&here, &children, &path) {
                    out.push((abs, path.join("::")));
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The marker [`references`] puts before a `crate::name!` (or `$crate::name!`) call: a
/// `#[macro_export]` macro, which the language places at the crate root wherever it is written.
const MACRO_CALL: &str = "macro!";

/// The macro a reference calls, if it is such a call.
fn macro_called(path: &[String]) -> Option<&str> {
    match path {
        [marker, name] if marker == MACRO_CALL => Some(name),
        _ => None,
    }
}

/// The file of `krate` that writes `macro_rules! name`: an exported macro depends on the file
/// that defines it, not on the root it is exported from.
fn exported_macro_file(
    sources: &BTreeMap<String, String>,
    krate: &Crate,
    name: &str,
) -> Option<String> {
    krate.modules.values().find_map(|file| {
        let tokens = tokenize(&strip(&sources[file]));
        tokens
            .windows(3)
            .any(|w| w[0] == "macro_rules" && w[1] == "!" && w[2] == name)
            .then(|| file.clone())
    })
}

/// `path` made absolute from the module `here`; `None` for paths outside the crate.
fn absolute(here: &[String], children: &BTreeSet<String>, path: &[String]) -> Option<Vec<String>> {
    let first = path.first()?.as_str();
    let mut out: Vec<String>;
    let mut rest = path;
    match first {
        "crate" => {
            out = Vec::new();
            rest = &path[1..];
        }
        "self" => {
            out = here.to_vec();
            rest = &path[1..];
        }
        "super" => {
            out = here.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                out.pop();
                rest = &rest[1..];
            }
        }
        _ if children.contains(first) => {
            out = here.to_vec();
        }
        _ => return None,
    }
    out.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(out)
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tokens: &[String]) -> Vec<Vec<String>> {
    fn tree(tokens: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        while *i < tokens.len() {
            let t = tokens[*i].as_str();
            match t {
                "::" => *i += 1,
                "{" => {
                    *i += 1;
                    loop {
                        tree(tokens, i, &path, out);
                        match tokens.get(*i).map(String::as_str) {
                            Some(",") => *i += 1,
                            Some("}") => {
                                *i += 1;
                                return;
                            }
                            _ => return,
                        }
                        if tokens.get(*i).is_some_and(|t| t == "}") {
                            *i += 1;
                            return;
                        }
                    }
                }
                "," | "}" => break,
                "as" => *i += 2,
                "*" => *i += 1,
                _ => {
                    path.push(t.to_owned());
                    *i += 1;
                }
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    // `pub use`, `pub(crate) use`: only what follows `use` is passed here.
    tree(tokens, &mut i, &[], &mut out);
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::` and single punctuation characters.
fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// The text without comments, string literals and character literals (each replaced by a
/// space), so that a path in a doc comment or a message is not taken for an import.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && raw_string_end(&chars, i).is_some()
        {
            i = raw_string_end(&chars, i).expect("checked");
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && char_literal_end(&chars, i).is_some() {
            i = char_literal_end(&chars, i).expect("checked");
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// After `r"…"` or `r#"…"#` starting at `i` (the `r`), if it is one.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None; // `for"` in an identifier, not a raw string
    }
    let mut j = i + 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// After a character literal starting at `i` (`'a'`, `'\n'`, `'\u{1F600}'`), if it is one and
/// not a lifetime.
fn char_literal_end(chars: &[char], i: usize) -> Option<usize> {
    match chars.get(i + 1)? {
        '\\' => {
            let close = (i + 3..chars.len().min(i + 14)).find(|&j| chars[j] == '\'')?;
            Some(close + 1)
        }
        _ if chars.get(i + 2) == Some(&'\'') => Some(i + 3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Graph {
        Graph::of_sources(
            &files
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect(),
        )
    }

    #[test]
    fn finds_a_cycle_through_use_and_code_paths() {
        let g = graph(&[
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b::thing; pub fn f() {}"),
            ("b.rs", "pub fn thing() { crate::a::f() }"),
        ]);
        assert_eq!(g.cycles(), vec![vec!["a.rs".to_owned(), "b.rs".to_owned()]]);
    }

    #[test]
    fn a_child_naming_its_parent_module_closes_a_cycle() {
        let g = graph(&[
            ("lib.rs", "mod w;"),
            ("w/mod.rs", "mod c; pub struct S;"),
            ("w/c.rs", "use super::S;"),
        ]);
        assert_eq!(
            g.cycles(),
            vec![vec!["w/c.rs".to_owned(), "w/mod.rs".to_owned()]]
        );
    }

    #[test]
    fn an_exported_macro_is_the_file_that_writes_it_not_the_root() {
        let graph = graph(&[
            ("lib.rs", "mod a; mod b; mod c; pub use a::f;"),
            (
                "a.rs",
                "pub fn f() {} #[macro_export] macro_rules! m { () => { $crate::m!(@x) }; (@x) => { $crate::a::f() } }",
            ),
            ("b.rs", "pub fn g() { crate::m!() }"),
            ("c.rs", "macro_rules! n { () => { $crate::b::g() } }"),
        ]);
        assert!(graph.cycles().is_empty(), "{:?}", graph.edges);
        assert_eq!(graph.edges["b.rs"].keys().collect::<Vec<_>>(), ["a.rs"]);
        assert!(graph.edges.get("c.rs").is_none_or(BTreeMap::is_empty), "{:?}", graph.edges);
    }

    #[test]
    fn a_path_into_a_sibling_file_is_not_a_path_into_the_parent() {
        let g = graph(&[
            ("lib.rs", "mod w;"),
            ("w/mod.rs", "mod c; mod d; pub use d::S;"),
            (
                "w/c.rs",
                "use super::d::{S, T as U}; fn f() { super::d::g() }",
            ),
            ("w/d.rs", "pub struct S; pub struct T; pub fn g() {}"),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.edges);
        assert!(g.edges["w/c.rs"].contains_key("w/d.rs"));
        assert!(!g.edges["w/c.rs"].contains_key("w/mod.rs"));
    }

    #[test]
    fn comments_strings_and_tests_modules() {
        let g = graph(&[
            ("lib.rs", "mod a; mod b;"),
            (
                "a.rs",
                "// crate::b::x\n/* crate::b::y */ const S: &str = \"crate::b::z\"; \
                 const C: char = '\"'; fn f<'a>(x: &'a str) {} \
                 #[cfg(test)] mod tests { use super::*; }",
            ),
            ("b.rs", "use crate::a::f;"),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.edges);
    }

    #[test]
    fn group_imports_expand() {
        assert_eq!(
            expand_use(&tokenize("crate::a::{self, b::{c, d}, e as f}")),
            vec![
                vec!["crate", "a", "self"],
                vec!["crate", "a", "b", "c"],
                vec!["crate", "a", "b", "d"],
                vec!["crate", "a", "e"],
            ]
            .into_iter()
            .map(|p| p.into_iter().map(str::to_owned).collect::<Vec<_>>())
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn binaries_are_crates_of_their_own() {
        let g = graph(&[
            ("lib.rs", "mod a;"),
            ("a.rs", ""),
            (
                "bin/tool/main.rs",
                "mod view; use heapwatch::a; fn main() { view::show() }",
            ),
            ("bin/tool/view.rs", "pub fn show() { crate::helper() }"),
        ]);
        let cycles = g.cycles();
        assert_eq!(
            cycles,
            vec![vec![
                "bin/tool/main.rs".to_owned(),
                "bin/tool/view.rs".to_owned()
            ]]
        );
    }
}
