//! Empty: this crate exists for its benchmark (`benches/jemalloc_prof.rs`).
