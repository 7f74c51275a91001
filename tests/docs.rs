//! The documents as a reader meets them: every Markdown page of the repository (the README, the
//! guide under `docs/`, the contributor pages) has only links that resolve, to files that exist
//! and to headings that exist; every code block names its language, and every page's Rust
//! blocks are compiled and run as doctests (`src/doc_tests.rs` lists every page); the README
//! stays a front page; and no page, nor the crate's rustdoc, speaks of how the project was made
//! (issue numbers, commit hashes, the machine of one day, "was" asides).
//!
//! Frame-pointer pass: not needed — reads text files; no stack is captured.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 250;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown page a user or contributor reads.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = [
        "README.md",
        "CONTRIBUTING.md",
        "ARCHITECTURE.md",
        "CHANGELOG.md",
    ]
    .iter()
    .map(|name| root().join(name))
    .collect();
    let mut guide: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("readable docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    guide.sort();
    pages.extend(guide);
    pages
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The page's lines outside fenced code blocks, with their line numbers (1-based).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut prose = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            prose.push((index + 1, line));
        }
    }
    prose
}

/// A line with its inline code spans (`…`) blanked, so that code is not read as links.
fn without_inline_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for ch in line.chars() {
        if ch == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { ch });
        }
    }
    out
}

/// The targets of inline links and images on a line: `[text](target)` and `![alt](target)`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_inline_code(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        // A target ends at the matching parenthesis (URLs may hold balanced ones).
        let mut depth = 1;
        let mut end = None;
        for (i, ch) in after.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let target = after[..end]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        targets.push(target);
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`.
fn slug(heading: &str) -> String {
    let text = without_inline_code_keep_text(heading);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|ch| match ch {
            ' ' => Some('-'),
            '-' | '_' => Some(ch),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// A heading's text as GitHub renders it: code spans keep their text, links their label.
fn without_inline_code_keep_text(heading: &str) -> String {
    let mut text = heading.replace('`', "");
    // [label](target) → label
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')').map(|i| mid + i) else {
            break;
        };
        if open > mid {
            break;
        }
        text = format!(
            "{}{}{}",
            &text[..open],
            &text[open + 1..mid],
            &text[close + 1..]
        );
    }
    text
}

/// The anchors a page's headings give, with GitHub's `-1`, `-2` suffixes for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let trimmed = line.trim_start();
        if !trimmed.starts_with('#') {
            continue;
        }
        let heading = trimmed.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

#[test]
fn every_link_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(&page).expect("readable page");
        let dir = page.parent().expect("a page has a directory");
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.is_empty() {
                    broken.push(format!("{}:{number}: empty link target", relative(&page)));
                    continue;
                }
                if target.contains("://") || target.starts_with("mailto:") {
                    continue; // no network here; the text of external links is reviewed by hand
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    page.clone()
                } else {
                    dir.join(path)
                };
                if !file.exists() {
                    broken.push(format!(
                        "{}:{number}: {target}: no such file",
                        relative(&page)
                    ));
                    continue;
                }
                if let Some(anchor) = anchor {
                    if file.extension().is_some_and(|ext| ext == "md") {
                        let target_text = fs::read_to_string(&file).expect("readable target");
                        if !anchors(&target_text).contains(anchor) {
                            broken.push(format!(
                                "{}:{number}: {target}: no heading gives #{anchor}",
                                relative(&page)
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_code_block_names_its_language() {
    let mut bare = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(&page).expect("readable page");
        let mut in_fence = false;
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if let Some(info) = trimmed.strip_prefix("```") {
                if !in_fence && info.trim().is_empty() {
                    // rustdoc would compile an unlabelled block as Rust, GitHub shows it plain.
                    bare.push(format!("{}:{}", relative(&page), index + 1));
                }
                in_fence = !in_fence;
            }
        }
        assert!(
            !in_fence,
            "{}: a code block is never closed",
            relative(&page)
        );
    }
    assert!(
        bare.is_empty(),
        "code blocks without a language (```rust, ```text, ```sh…):\n{}",
        bare.join("\n")
    );
}

#[test]
fn every_page_is_compiled_as_doctests() {
    let listed = fs::read_to_string(root().join("src/doc_tests.rs")).expect("src/doc_tests.rs");
    let missing: Vec<String> = pages()
        .iter()
        .map(|page| relative(page))
        .filter(|page| !listed.contains(&format!("\"../{page}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "pages whose Rust blocks no doctest compiles (add them to src/doc_tests.rs): {missing:?}"
    );
}

#[test]
fn the_readme_is_a_front_page() {
    let text = fs::read_to_string(root().join("README.md")).expect("README.md");
    let lines = text.lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines; depth belongs in docs/"
    );
    for must in [
        "docs/README.md",
        "cargo run --release --example demo",
        "bash .ci/run",
    ] {
        assert!(text.contains(must), "README.md does not mention {must}");
    }
}

/// Words of the project's own history: the documents speak to users about what is.
fn history_words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    for phrase in [
        "this shared machine",
        "this machine",
        "on a day when",
        "(was ",
        "(before:",
        "(before =",
        "before issue",
        "the seed",
        "seed's",
        "against the targets",
    ] {
        if lower.contains(phrase) {
            found.push(format!("\"{phrase}\""));
        }
    }
    let bytes = lower.as_bytes();
    let word_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    // "issue 14", "issues 3", "task 7"
    for word in ["issue", "issues", "task"] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(word).map(|i| from + i) {
            from = at + word.len();
            let before_ok = at == 0 || !word_char(bytes[at - 1]);
            let rest = lower[from..].trim_start_matches([' ', '#']);
            if before_ok && rest.starts_with(|c: char| c.is_ascii_digit()) {
                found.push(format!("\"{}\"", &lower[at..(from + 4).min(lower.len())]));
            }
        }
    }
    // "#14" not part of a word (owner/repo#14 links are written as full URLs)
    for (at, _) in lower.match_indices('#') {
        let before_ok = at == 0
            || !(word_char(bytes[at - 1]) || bytes[at - 1] == b'/' || bytes[at - 1] == b'&');
        let digits = lower[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let after = lower.as_bytes().get(at + 1 + digits).copied();
        if before_ok && digits > 0 && !after.is_some_and(word_char) {
            found.push(format!("\"{}\"", &lower[at..at + 1 + digits]));
        }
    }
    // commit hashes: a code span of 7 to 12 hex digits mixing digits and letters, or "commit …"
    let is_hash = |token: &str| {
        (7..=12).contains(&token.len())
            && token.bytes().all(|b| b.is_ascii_hexdigit())
            && token.bytes().any(|b| b.is_ascii_digit())
            && token.bytes().any(|b| b.is_ascii_alphabetic())
    };
    for (i, span) in lower.split('`').enumerate() {
        if i % 2 == 1 && is_hash(span) {
            found.push(format!("hash-like `{span}`"));
        }
    }
    for (at, _) in lower.match_indices("commit ") {
        let token: String = lower[at + 7..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if is_hash(&token) {
            found.push(format!("hash-like \"{token}\""));
        }
    }
    found
}

#[test]
fn no_document_speaks_of_how_it_was_made() {
    let mut offences = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(&page).expect("readable page");
        for (index, line) in text.lines().enumerate() {
            for word in history_words(line) {
                offences.push(format!("{}:{}: {word}", relative(&page), index + 1));
            }
        }
    }
    // rustdoc is a document too
    let mut sources = vec![root().join("src")];
    while let Some(dir) = sources.pop() {
        for entry in fs::read_dir(&dir).expect("readable src dir") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                sources.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = fs::read_to_string(&path).expect("readable source");
                for (index, line) in text.lines().enumerate() {
                    let trimmed = line.trim_start();
                    if trimmed.starts_with("///") || trimmed.starts_with("//!") {
                        for word in history_words(trimmed) {
                            offences.push(format!("{}:{}: {word}", relative(&path), index + 1));
                        }
                    }
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "history in the documents:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    assert_eq!(
        slug("Evidence first, names after"),
        "evidence-first-names-after"
    );
    assert_eq!(
        slug("The `heapwatch` command: reading dumps"),
        "the-heapwatch-command-reading-dumps"
    );
    assert_eq!(
        link_targets("see [a](b.md#c) and ![p](x.png), `[not](code)`"),
        ["b.md#c", "x.png"]
    );
    assert!(!history_words("as measured in issue 14").is_empty());
    assert!(!history_words("fixed in #123.").is_empty());
    assert!(!history_words("before = `f16f0d1`").is_empty());
    assert!(!history_words("on this shared machine").is_empty());
    assert!(
        history_words("see https://github.com/tokio-rs/axum/issues/2659 and `#[test]`").is_empty()
    );
    assert!(
        history_words("colour #9467bd, 2 MiB, `0x7f12ab34cd`, 55d0c0a00000-55d0c0b00000")
            .is_empty()
    );
    assert!(!history_words("as of commit 3c61c39").is_empty());
    let text = "# Title\n## Same\n## Same\n```rust\n# not a heading\n```\n";
    let found = anchors(text);
    assert!(found.contains("same") && found.contains("same-1") && !found.contains("not-a-heading"));
}
