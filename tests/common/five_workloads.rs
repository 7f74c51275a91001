//! The five workloads that heapwatch, dhat and stats_alloc count side by side: the agreement
//! test (`tests/counts_agree.rs`) counts one call of each with all three at once, and the timing
//! examples (`tools/count_peers/`) time them under each counter alone. Included by `#[path]`,
//! so both see the very same code.
//!
//! Each shape exercises a different mix of the allocator's calls: `Vec` growth is one `alloc`
//! then `realloc`s, `format!` an estimate then growth, a `BTreeMap` many small node `alloc`s, a
//! JSON parse strings, vectors and maps of many sizes freed and kept, and a pre-sized `HashMap`
//! `alloc` + `dealloc` pairs (hashbrown resizes by moving, never by `realloc`). Each returns what
//! it built, so the counts include blocks still held at the end of the call, not only ones freed.
//! Inputs go through `black_box` so the compiler cannot fold the work away.

#![allow(dead_code)] // each including binary uses what it needs

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

/// A workload: a name for the tables and the function, whose result the caller drops.
pub struct Workload {
    pub name: &'static str,
    pub run: fn() -> Built,
}

/// What a workload built, kept opaque so every workload has one signature.
pub enum Built {
    Vec(Vec<u64>),
    String(String),
    BTreeMap(BTreeMap<u64, u64>),
    Json(serde_json::Value),
    HashMap(HashMap<u64, u64>),
}

/// The five, in table order.
pub const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "vec_push",
        run: vec_push,
    },
    Workload {
        name: "string_format",
        run: string_format,
    },
    Workload {
        name: "btreemap_build",
        run: btreemap_build,
    },
    Workload {
        name: "json_parse",
        run: json_parse,
    },
    Workload {
        name: "hashmap_reserve",
        run: hashmap_reserve,
    },
];

/// 1000 pushes into a `Vec` without `reserve`: the doubling growth is one `alloc` and a run of
/// `realloc`s, the case where the three crates' definitions of "an allocation" differ most.
pub fn vec_push() -> Built {
    let n = black_box(1000u64);
    let mut v = Vec::new();
    for i in 0..n {
        v.push(i);
    }
    Built::Vec(v)
}

/// `format!` of several values of different kinds (the formatter's capacity estimate, then growth).
pub fn string_format() -> Built {
    let id = black_box(90_210u64);
    let name = black_box("heapwatch");
    let ratio = black_box(1.618_034f64);
    let list = black_box([3u16, 1, 4, 1, 5, 9, 2, 6]);
    let flag = black_box(Some('x'));
    Built::String(format!(
        "request {id:>10} from {name:?} at ratio {ratio:.6}, buckets {list:?}, flag {flag:?}; \
         id again {id:#x} and {ratio:e}"
    ))
}

/// A `BTreeMap` of 500 entries inserted in a scattered order (leaf and internal node blocks,
/// splits as it fills).
pub fn btreemap_build() -> Built {
    let n = black_box(500u64);
    let mut map = BTreeMap::new();
    for i in 0..n {
        // 7919 is prime to 1009, so the keys are a permutation scattered over 0..1009.
        map.insert(i * 7919 % 1009, i);
    }
    Built::BTreeMap(map)
}

/// A fixed JSON document, shaped like a small API response: objects, arrays, strings (some
/// escaped), numbers.
const DOCUMENT: &str = r#"{
  "service": "orders",
  "version": "1.4.2",
  "healthy": true,
  "latency_ms": {"p50": 3.2, "p90": 11.7, "p99": 48.05},
  "regions": ["eu-west-1", "us-east-2", "ap-south-1"],
  "orders": [
    {"id": 1001, "customer": "Ada Lovelace", "items": [{"sku": "A-17", "qty": 2, "price": 9.99}, {"sku": "B-3", "qty": 1, "price": 120.0}], "note": null},
    {"id": 1002, "customer": "Grace \"Amazing\" Hopper", "items": [{"sku": "C-42", "qty": 10, "price": 0.5}], "note": "leave at the door\nring twice"},
    {"id": 1003, "customer": "Edsger Dijkstra", "items": [], "note": "gift: \u00e9t\u00e9"},
    {"id": 1004, "customer": "Barbara Liskov", "items": [{"sku": "A-17", "qty": 1, "price": 9.99}, {"sku": "D-8", "qty": 3, "price": 14.25}, {"sku": "E-1", "qty": 1, "price": 1999.0}], "note": null}
  ],
  "tags": {"team": "payments", "tier": "gold", "owner": "on-call@example.invalid"}
}"#;

/// `serde_json` parse of [`DOCUMENT`] into a `serde_json::Value`.
pub fn json_parse() -> Built {
    let value: serde_json::Value =
        serde_json::from_str(black_box(DOCUMENT)).expect("DOCUMENT is valid JSON");
    Built::Json(value)
}

/// A `HashMap` sized up front (`with_capacity`), grown once more on purpose (`reserve`), then
/// filled to the reserved size: the table moves to a new block, never `realloc`s.
pub fn hashmap_reserve() -> Built {
    let n = black_box(300u64);
    let mut map = HashMap::with_capacity(64);
    for i in 0..64 {
        map.insert(i, i * i);
    }
    map.reserve(n as usize);
    for i in 64..n {
        map.insert(i, i * i);
    }
    Built::HashMap(map)
}
