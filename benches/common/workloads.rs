//! The realistic workloads, shared by the bench suite (`benches/common/mod.rs`) and the cache
//! measurement (`examples/cache_misses.rs`): what a service does between two allocations, not
//! the allocator alone.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

/// A JSON document of about 200 KB: 1,000 records with strings, numbers and arrays.
pub fn json_document() -> String {
    let mut text = String::from("[");
    for i in 0..1000 {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com","active":{},"score":{}.5,"tags":["alpha","beta","gamma-{i}"],"address":{{"city":"City {i}","zip":"{:05}"}}}}"#,
            i % 2 == 0,
            i * 7,
            i * 13 % 100000
        ));
    }
    text.push(']');
    text
}

/// Parses the document into a `serde_json::Value` and drops it (about 19,000 allocations).
pub fn json_workload(document: &str) {
    let value: serde_json::Value = serde_json::from_str(black_box(document)).expect("valid JSON");
    black_box(&value);
}

/// Builds a 10,000-entry string-keyed map, sorts its keys by value length, and drops it.
pub fn map_workload() -> usize {
    let mut map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..10_000u32 {
        map.insert(
            format!("key-{:08}", i.wrapping_mul(2_654_435_761)),
            vec![i as u8; (i % 200) as usize + 8],
        );
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| map[*k].len());
    black_box(keys.len())
}

/// 400 request lines of an access log (about 40 KB), words drawn from a small vocabulary so
/// that tokens repeat as in real traffic.
pub fn request_text() -> String {
    const WORDS: [&str; 16] = [
        "users", "orders", "items", "search", "export", "ingest", "Tenant", "Region", "alpha",
        "beta", "Gamma", "delta", "sort", "desc", "fields", "page",
    ];
    let mut text = String::new();
    for i in 0..400usize {
        let word = |k: usize| WORDS[(i * 7 + k * 13 + i / 3) % WORDS.len()];
        text.push_str(&format!(
            "GET /api/v1/{}/{i}?{}={}&{}={} HTTP/1.1 host=svc-{} agent=client/{}.{} {}\n",
            word(0),
            word(1),
            word(2),
            word(3),
            i % 17,
            i % 5,
            i % 3,
            i % 11,
            word(4),
        ));
    }
    text
}

/// What a request handler does with text: tokenise into owned lowercase strings, index them in
/// a map of owned keys, sort by frequency, and format a response (about 6,000 allocations, of
/// a few to a few hundred bytes, and reallocs as the vectors and the response grow).
pub fn request_workload(text: &str) -> usize {
    let tokens: Vec<String> = black_box(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for (position, token) in tokens.iter().enumerate() {
        index.entry(token.clone()).or_default().push(position);
    }
    let mut entries: Vec<(&String, &Vec<usize>)> = index.iter().collect();
    entries.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut response = String::new();
    for (token, positions) in entries.iter().take(300) {
        response.push_str(&format!(
            "{token}: {} times, first at {}\n",
            positions.len(),
            positions[0]
        ));
    }
    black_box(response.len())
}
