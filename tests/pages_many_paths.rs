//! The response budget must bound the pages, not refuse an ordinary large heap: a heap of
//! 16,384 distinct call paths (a 14-level binary recursion through two functions, a block kept
//! at each leaf, every allocation sampled) — more distinct stacks than most services ever
//! hold — is served under the default budget. Each heavy page answers 200, and `go tool
//! pprof` reads the protobuf page's live total as the sum of the blocks kept.
//!
//! `harness = false`: the sampling rate is process-wide. Requires Go (`golang-go`).
//!
//! Frame-pointer pass: not needed — what is checked is that the pages answer, whichever walk captured the stacks.

mod common;

use std::hint::black_box;

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Levels of the binary recursion: 2^LEVELS distinct call paths.
const LEVELS: u32 = 14;
/// Each leaf's block.
const BLOCK: usize = 1024;

fn left(level: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    descend(level, path, kept);
    black_box(&kept);
}

fn right(level: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    descend(level, path, kept);
    black_box(&kept);
}

/// Goes down `level` more levels, choosing `left` or `right` by the bits of `path`.
fn descend(level: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    if level == 0 {
        kept.push(vec![path as u8; BLOCK].into_boxed_slice());
        return;
    }
    if path >> (level - 1) & 1 == 0 {
        left(level - 1, path, kept);
    } else {
        right(level - 1, path, kept);
    }
}

fn main() {
    common::require_tool("go", "golang-go");
    let previous_rate = heapwatch::sample_rate();
    heapwatch::set_sample_rate(1);
    let mut kept = Vec::with_capacity(1 << LEVELS);
    for path in 0..1u32 << LEVELS {
        descend(LEVELS, path, &mut kept);
    }
    heapwatch::set_sample_rate(previous_rate);
    let distinct = heapwatch::snapshot().samples.len();
    println!("pages_many_paths: {distinct} live stacks");
    let mut failures = Vec::new();
    if distinct < 10_000 {
        failures.push(format!(
            "only {distinct} distinct stacks: the heap is not the one meant"
        ));
    }

    let server = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("the listener");
    let addr = server.local_addr().to_string();
    for page in [
        "/debug/pprof/heap",
        "/debug/pprof/heap?debug=1",
        "/debug/heap/flamegraph.svg",
        "/debug/heap/flamegraph.svg?by=span",
        "/debug/heap/report",
    ] {
        let (status, body) = common::http_get(&addr, page);
        println!("pages_many_paths: {page}: {status}, {} bytes", body.len());
        if status != 200 {
            failures.push(format!(
                "{page}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
    }

    let scratch = std::env::temp_dir().join(format!("heapwatch-many-paths-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let url = format!("http://{addr}/debug/pprof/heap");
    let top = common::go_pprof(
        &["-top", "-sample_index=inuse_space", "-unit=B"],
        &url,
        &scratch,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let total = top
        .lines()
        .find_map(|line| {
            let rest = line.split(" of ").nth(1)?;
            rest.split_whitespace()
                .next()?
                .trim_end_matches('B')
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    let expected = ((1usize << LEVELS) * BLOCK) as f64;
    println!("pages_many_paths: go tool pprof reads {total} B live in the leaves' blocks and more; kept {expected} B");
    if total < expected * 0.9 {
        failures.push(format!(
            "go tool pprof read {total} B live, the leaves alone keep {expected} B"
        ));
    }
    drop(kept);
    drop(server);
    for failure in &failures {
        eprintln!("pages_many_paths: FAILED: {failure}");
    }
    println!(
        "{} passed, {} failed",
        usize::from(failures.is_empty()),
        usize::from(!failures.is_empty())
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
