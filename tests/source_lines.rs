//! With the `dwarf` feature (a default one), profiles carry file and line numbers and inlined
//! frames; `set_source_lines(false)` goes back to names from the symbol table alone. This also
//! measures what the DWARF costs, against the symbol-table path.
#![cfg(feature = "dwarf")]

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

#[inline(never)]
fn allocate_on_a_known_line() -> Vec<Vec<u8>> {
    (0..64).map(|_| vec![0u8; 64 * 1024]).collect()
}

#[test]
fn dwarf_gives_file_and_line_by_default() {
    heapwatch::set_sample_rate(1);
    let held = allocate_on_a_known_line();

    heapwatch::set_source_lines(false);
    let names_only = heapwatch::snapshot();
    let symtab_cost = heapwatch::profiler_stats().symbol_cache_bytes;
    assert!(names_only
        .locations
        .iter()
        .all(|l| l.lines.iter().all(|line| line.file.is_none())));

    heapwatch::set_source_lines(true);
    let with_lines = heapwatch::snapshot();
    let dwarf_cost = heapwatch::profiler_stats().symbol_cache_bytes;

    // The closure that allocates is named after the function it is written in, even where that
    // function leaves no frame: it may tail-call `from_iter` (a `jmp`, as this build does), so no
    // return address into it is on the stack, and only the closure's type, among the generic
    // arguments of the adapters it is inlined into, names it.
    let line = with_lines
        .locations
        .iter()
        .flat_map(|l| &l.lines)
        .find(|line| line.function.contains("allocate_on_a_known_line"))
        .expect("the allocating function");
    let file = line.file.as_deref().unwrap_or_default();
    assert!(file.ends_with("source_lines.rs"), "file {file:?}");
    assert!(line.line > 0);
    assert!(
        dwarf_cost > symtab_cost,
        "the DWARF's memory is not reported: {dwarf_cost} vs {symtab_cost}"
    );
    println!(
        "symbol table index and cache: {symtab_cost} bytes; with this test binary's DWARF: {dwarf_cost} bytes"
    );
    drop(held);
}
