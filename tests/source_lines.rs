//! With the `dwarf` feature and `set_source_lines(true)`, profiles carry file and line numbers
//! (and inlined frames); this measures what loading DWARF costs, against the default
//! symbol-table path.
#![cfg(feature = "dwarf")]

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

#[inline(never)]
fn allocate_on_a_known_line() -> Vec<Vec<u8>> {
    (0..64).map(|_| vec![0u8; 64 * 1024]).collect()
}

#[test]
fn dwarf_gives_file_and_line() {
    heapwatch::set_sample_rate(1);
    let held = allocate_on_a_known_line();

    let heap_before = heapwatch::stats().live_bytes;
    let names_only = heapwatch::snapshot();
    let symtab_cost = heapwatch::profiler_stats().symbol_cache_bytes;
    assert!(names_only
        .locations
        .iter()
        .all(|l| l.lines.iter().all(|line| line.file.is_none())));

    heapwatch::set_source_lines(true);
    let with_lines = heapwatch::snapshot();
    let dwarf_heap = heapwatch::stats().live_bytes.saturating_sub(heap_before);
    heapwatch::set_source_lines(false);

    let line = with_lines
        .locations
        .iter()
        .flat_map(|l| &l.lines)
        .find(|line| line.function.ends_with("allocate_on_a_known_line"))
        .expect("the allocating function");
    let file = line.file.as_deref().unwrap_or_default();
    assert!(file.ends_with("source_lines.rs"), "file {file:?}");
    assert!(line.line > 0);
    println!(
        "symbol table index and cache: {symtab_cost} bytes; DWARF for this test binary: {dwarf_heap} bytes of heap"
    );
    drop(held);
}
