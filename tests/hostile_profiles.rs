//! Hostile profiles: small files, each under 10 MB, built to make a pprof decoder take all the
//! memory it can — gzip bombs (zeros; a valid profile padded with gigabytes), millions of empty
//! samples or strings, values arrays far longer than the sample types, one long name copied into
//! a hundred thousand lines or mappings, a million sample types with a long name, stacks that
//! expand to gigabytes of names, a hundred thousand unnamed locations in an object with a long
//! name, two hundred thousand locations for `symbolize` to name, and a file that never ends
//! (`/dev/zero`); and profiles just within the limit, shaped for the most flamegraph frames, the
//! most folded text, or many spans over deep stacks drawn by span (`flamegraph --by-span`).
//!
//! For each, the `heapwatch` command must end with a clean error — exit 1, one line naming the
//! limit and how to raise it — or, within the limit, succeed; either within its time bound and
//! with a peak resident memory of at most 256 MiB. The library's decoder, called in a process of
//! its own, must do the same with at most 256 MiB allocated at its peak. A real profile still
//! reads, and the limit can be set by flag or by environment.
//!
//! Each measurement runs in a child process started by a fresh copy of this binary: a child's
//! peak resident size (`ru_maxrss`) includes its parent's at fork, so the command is started
//! from a small process, not from this one. Each child also gets a 1 GiB address-space limit
//! (or, for the library, a 1 GiB allocation ceiling), so an unbounded decoder fails fast here
//! instead of taking a shared machine's memory. `harness = false`: the cases run one after the
//! other, never two memory measurements at once.
//!
//! Frame-pointer pass: not needed — hostile input to the decoder; no stack is captured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_heapwatch");
/// The bound under test: no input under 10 MB makes the command or the decoder use more.
const PEAK_LIMIT: u64 = 256 << 20;
/// The largest input file a case may write.
const INPUT_LIMIT: u64 = 10_000_000;
/// Address space for a command under test, and allocations for a decoder under test.
const CHILD_MEMORY: u64 = 1 << 30;
/// Time allowed to one command or decode.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

// --- Counting allocator: the library's peak, per thread ------------------------------------

/// Counts the bytes each thread holds, for [`metered`], and refuses a thread more than
/// [`CHILD_MEMORY`] (the process then aborts, as on any failed allocation).
struct Counting;

thread_local! {
    static LIVE: Cell<u64> = const { Cell::new(0) };
    static PEAK: Cell<u64> = const { Cell::new(0) };
}

fn take(bytes: usize) -> bool {
    LIVE.try_with(|live| {
        let now = live.get().saturating_add(bytes as u64);
        if now > CHILD_MEMORY {
            return false;
        }
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        true
    })
    .unwrap_or(true)
}

fn give(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes as u64)));
}

// SAFETY: every call is forwarded to `System` with the caller's layout and pointer unchanged, so
// `System`'s contract is the caller's; the counters are const-initialised thread locals without
// destructors, so reading them never allocates and never fails during thread teardown.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        give(layout.size());
        // SAFETY: as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !take(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as the caller's.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            if new_size > layout.size() {
                give(new_size - layout.size());
            }
        } else if new_size < layout.size() {
            give(layout.size() - new_size);
        }
        moved
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f`, returning what it returned and the most bytes this thread held above its start.
fn metered<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

// --- Protobuf wire format, by hand: a hostile file is what no encoder writes ---------------

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field: a message, a string, or packed scalars.
fn bytes_field(field: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    varint(field << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn varint_field(field: u64, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3, &mut out);
    varint(value, &mut out);
    out
}

/// The start of a heap profile: the string table `"", "inuse_space", "bytes"`, then `extra`
/// strings (indexes 3, 4, …), and the sample type inuse_space/bytes.
fn heap_profile_start(extra: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for string in [&b""[..], b"inuse_space", b"bytes"].iter().chain(extra) {
        out.extend(bytes_field(6, string));
    }
    out.extend(bytes_field(
        1,
        &[varint_field(1, 1), varint_field(2, 2)].concat(),
    ));
    out
}

/// A function `id` named by string `name`.
fn function(id: u64, name: u64) -> Vec<u8> {
    bytes_field(5, &[varint_field(1, id), varint_field(2, name)].concat())
}

/// A sample at `location_ids` (packed) with one value (packed) per value in `values`.
fn sample(location_ids: &[u8], values: &[u8]) -> Vec<u8> {
    bytes_field(
        2,
        &[bytes_field(1, location_ids), bytes_field(2, values)].concat(),
    )
}

/// A small real heap profile: `grow` holds 4096 bytes.
fn real_profile() -> Vec<u8> {
    let mut raw = heap_profile_start(&[b"grow"]);
    raw.extend(function(1, 3));
    raw.extend(bytes_field(
        4,
        &[varint_field(1, 1), bytes_field(4, &varint_field(1, 1))].concat(),
    ));
    let mut value = Vec::new();
    varint(4096, &mut value);
    raw.extend(sample(&[1], &value));
    raw
}

// --- Writing the files ------------------------------------------------------------------

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(raw).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// Writes `head` then `unit` repeated to `total` bytes in all, gzip-compressed: `head` as one
/// gzip member, then one 16 MiB member of `unit`s written again and again (members back to
/// back are one stream to a gzip reader), so a file of a few MB inflates to GiBs and takes a
/// fraction of a second to write.
fn write_bomb(path: &Path, head: &[u8], unit: &[u8], total: u64) {
    let units_per_chunk = (16 << 20) / unit.len();
    let chunk = gzip(&unit.repeat(units_per_chunk));
    let units = (total - head.len() as u64) / unit.len() as u64;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    file.write_all(&gzip(head)).expect("write input");
    for _ in 0..units / units_per_chunk as u64 {
        file.write_all(&chunk).expect("write input");
    }
    let rest = (units % units_per_chunk as u64) as usize;
    file.write_all(&gzip(&unit.repeat(rest)))
        .expect("write input");
    file.flush().expect("write input");
}

/// What must become of one run on a hostile input.
#[derive(Clone, Copy)]
enum Expect {
    /// A clean refusal: exit 1, one line saying each of these.
    Refused(&'static [&'static str]),
    /// Read and shown (a profile within the limit), within the same memory bound.
    Succeeds,
}

/// A hostile input and what must become of it.
struct Case {
    name: &'static str,
    /// What it attacks.
    attack: &'static str,
    file: PathBuf,
    /// The commands to run on it (`{}` stands for the file) and what each must do.
    runs: Vec<(Vec<String>, Expect)>,
    /// What the library's `read_pprof` must do (`None`: not called, for a file that never ends).
    library: Option<Expect>,
}

/// The command lines `commands` (`{}` stands for the input), each with `expect`.
fn runs(commands: &[&[&str]], expect: Expect) -> Vec<(Vec<String>, Expect)> {
    commands
        .iter()
        .map(|c| (c.iter().map(|a| a.to_string()).collect(), expect))
        .collect()
}

const TOP: &[&str] = &["top", "{}"];
const FLAMEGRAPH: &[&str] = &["flamegraph", "{}", "-o", "/dev/null"];
const DIFF: &[&str] = &["diff", "{}", "{}", "-o", "/dev/null"];

/// `stacks` samples, each `frames` frames of one function named by `name_len` bytes of `n`
/// under a root frame of its own (so that no two stacks share a prefix a flamegraph could
/// merge): the most frames, or the most text, a profile can carry for its size.
fn many_frames(stacks: u64, frames: usize, name_len: usize) -> Vec<u8> {
    let name = vec![b'n'; name_len];
    let roots: Vec<Vec<u8>> = (0..stacks)
        .map(|s| format!("root{s}").into_bytes())
        .collect();
    let mut extra: Vec<&[u8]> = vec![&name];
    extra.extend(roots.iter().map(Vec::as_slice));
    let mut raw = heap_profile_start(&extra);
    for id in 1..=stacks + 1 {
        raw.extend(function(id, id + 2));
        raw.extend(bytes_field(
            4,
            &[varint_field(1, id), bytes_field(4, &varint_field(1, id))].concat(),
        ));
    }
    for s in 0..stacks {
        let mut ids = vec![1u8; frames];
        varint(s + 2, &mut ids);
        let mut value = Vec::new();
        varint(1000 + s, &mut value);
        raw.extend(sample(&ids, &value));
    }
    raw
}

/// `samples` samples, sample `i` a stack of the first `1 + i % depth` of `depth` functions each
/// named by `name_len` bytes, under span `request` with `tenant` one of `tenants`: what
/// `flamegraph --by-span` would fold into samples × depth lines of long names.
fn many_spans(samples: u64, depth: u64, name_len: usize, tenants: u64) -> Vec<u8> {
    let names: Vec<Vec<u8>> = (0..depth)
        .map(|d| {
            let mut name = format!("f{d}_").into_bytes();
            name.resize(name_len, b'n');
            name
        })
        .collect();
    let tenant_names: Vec<Vec<u8>> = (0..tenants).map(|t| format!("t{t}").into_bytes()).collect();
    let mut extra: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    extra.extend([&b"span"[..], b"request", b"tenant"]);
    extra.extend(tenant_names.iter().map(Vec::as_slice));
    let (span_key, tenant_key, first_tenant) = (3 + depth, 5 + depth, 6 + depth);
    let mut raw = heap_profile_start(&extra);
    for id in 1..=depth {
        raw.extend(function(id, id + 2));
        raw.extend(bytes_field(
            4,
            &[varint_field(1, id), bytes_field(4, &varint_field(1, id))].concat(),
        ));
    }
    let label = |key: u64, value: u64| {
        bytes_field(3, &[varint_field(1, key), varint_field(2, value)].concat())
    };
    for i in 0..samples {
        let mut ids = Vec::new();
        for id in (1..=1 + i % depth).rev() {
            varint(id, &mut ids);
        }
        let mut value = Vec::new();
        varint(1000, &mut value);
        // As `sample` builds one, with labels.
        let message = bytes_field(
            2,
            &[
                bytes_field(1, &ids),
                bytes_field(2, &value),
                label(span_key, span_key + 1),
                label(tenant_key, first_tenant + i % tenants),
            ]
            .concat(),
        );
        raw.extend(message);
    }
    raw
}

/// Where the executable code of `binary` lies in the file: (offset, size).
fn code_in_file(binary: &Path) -> (u64, u64) {
    use object::{Object, ObjectSegment, SegmentFlags};
    let bytes = std::fs::read(binary).expect("read the heapwatch binary");
    let elf = object::File::parse(&*bytes).expect("an ELF binary");
    elf.segments()
        .find(|s| {
            matches!(s.flags(), SegmentFlags::Elf { p_flags, .. } if p_flags.0 & object::elf::PF_X.0 != 0)
        })
        .map(|s| s.file_range())
        .expect("an executable segment")
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut case = |name: &'static str,
                    attack: &'static str,
                    write: &dyn Fn(&Path),
                    runs: Vec<(Vec<String>, Expect)>,
                    library: Option<Expect>| {
        let file = dir.join(name);
        write(&file);
        cases.push(Case {
            name,
            attack,
            file,
            runs,
            library,
        });
    };
    const TOO_BIG: Expect =
        Expect::Refused(&["larger than 64.0 MiB uncompressed", "--decode-limit"]);
    let refused = |says: &'static [&'static str]| Expect::Refused(says);

    case(
        "zeros.pb.gz",
        "gzip bomb: 4 GiB of zeros",
        &|file| write_bomb(file, b"", &[0], 4 << 30),
        runs(&[TOP], TOO_BIG),
        Some(TOO_BIG),
    );
    case(
        "padded.pb.gz",
        "a real profile, then a 4 GiB unknown field of zeros",
        &|file| {
            let mut head = real_profile();
            varint(100 << 3 | 2, &mut head);
            varint(4 << 30, &mut head);
            write_bomb(file, &head, &[0], 4 << 30)
        },
        runs(&[TOP], TOO_BIG),
        Some(TOO_BIG),
    );
    let samples = refused(&["would take more than 64.0 MiB", "samples", "--decode-limit"]);
    case(
        "empty_samples.pb.gz",
        "30 million empty samples (60 MB inflated): 2 bytes each, 72 decoded",
        &|file| write_bomb(file, &heap_profile_start(&[]), &[0x12, 0x00], 60_000_000),
        runs(&[TOP], samples),
        Some(samples),
    );
    case(
        "empty_samples_4gib.pb.gz",
        "2 billion empty samples (4 GiB inflated)",
        &|file| write_bomb(file, &heap_profile_start(&[]), &[0x12, 0x00], 4 << 30),
        runs(&[TOP], TOO_BIG),
        Some(TOO_BIG),
    );
    let strings = refused(&["would take more than 64.0 MiB", "string table"]);
    case(
        "empty_strings.pb.gz",
        "30 million empty strings",
        &|file| write_bomb(file, &heap_profile_start(&[]), &[0x32, 0x00], 60_000_000),
        runs(&[TOP], strings),
        Some(strings),
    );
    case(
        "long_values.pb.gz",
        "500 samples of 100,000 values each, for one sample type",
        &|file| {
            let mut raw = heap_profile_start(&[]);
            let one = sample(&[], &[1u8; 100_000]);
            for _ in 0..500 {
                raw.extend_from_slice(&one);
            }
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        runs(&[TOP], samples),
        Some(samples),
    );
    let copies = refused(&[
        "would take more than 64.0 MiB",
        "function names copied into lines",
    ]);
    case(
        "name_copies.pb.gz",
        "a 4 MiB function name in 100,000 lines of one location",
        &|file| {
            let name = vec![b'x'; 4 << 20];
            let mut raw = heap_profile_start(&[&name]);
            raw.extend(function(1, 3));
            let mut location = varint_field(1, 1);
            let line = bytes_field(4, &varint_field(1, 1));
            for _ in 0..100_000 {
                location.extend_from_slice(&line);
            }
            raw.extend(bytes_field(4, &location));
            raw.extend(sample(&[1], &[1]));
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        runs(&[TOP], copies),
        Some(copies),
    );
    let mappings = refused(&["would take more than 64.0 MiB", "mappings"]);
    case(
        "mapping_copies.pb.gz",
        "a 4 MiB file name in 100,000 mappings",
        &|file| {
            let path = vec![b'/'; 4 << 20];
            let mut raw = heap_profile_start(&[&path]);
            for id in 1..=100_000 {
                raw.extend(bytes_field(
                    3,
                    &[varint_field(1, id), varint_field(5, 3)].concat(),
                ));
            }
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        runs(&[TOP], mappings),
        Some(mappings),
    );
    let types = refused(&["not a heap profile", "and 999996 more"]);
    case(
        "sample_type_names.pb.gz",
        "a million sample types, each named by a 1 MiB string",
        &|file| {
            let mut raw = bytes_field(6, b"");
            raw.extend(bytes_field(6, &vec![b'y'; 1 << 20]));
            let sample_type = bytes_field(1, &[varint_field(1, 1), varint_field(2, 1)].concat());
            for _ in 0..1_000_000 {
                raw.extend_from_slice(&sample_type);
            }
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        runs(&[TOP], types),
        Some(types),
    );
    let named = refused(&["would take more than 64.0 MiB", "stacks named in full"]);
    case(
        "deep_stacks.pb.gz",
        "16 stacks of 100,000 frames of a 64 KiB name: 100 GB of folded text",
        &|file| {
            let name = vec![b'z'; 64 << 10];
            let mut raw = heap_profile_start(&[&name]);
            raw.extend(function(1, 3));
            raw.extend(bytes_field(
                4,
                &[varint_field(1, 1), bytes_field(4, &varint_field(1, 1))].concat(),
            ));
            let one = sample(&[1u8; 100_000], &[1]);
            for _ in 0..16 {
                raw.extend_from_slice(&one);
            }
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        [
            runs(&[TOP, FLAMEGRAPH], named),
            runs(
                &[DIFF],
                refused(&[
                    "would take more than 32.0 MiB",
                    "stacks named in full",
                    "half the limit",
                ]),
            ),
        ]
        .concat(),
        Some(named),
    );
    let unnamed = refused(&["would take more than 64.0 MiB", "location names"]);
    case(
        "unnamed_locations.pb.gz",
        "100,000 unnamed locations in an object with a 4 MiB file name",
        &|file| {
            let path = vec![b'o'; 4 << 20];
            let mut raw = heap_profile_start(&[&path]);
            raw.extend(bytes_field(
                3,
                &[varint_field(1, 1), varint_field(5, 3)].concat(),
            ));
            for id in 1..=100_000 {
                raw.extend(bytes_field(
                    4,
                    &[varint_field(1, id), varint_field(2, 1)].concat(),
                ));
            }
            raw.extend(sample(&[1], &[1]));
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        runs(&[TOP], unnamed),
        Some(unnamed),
    );
    // Within the limit: read and drawn, in bounded memory. 61 MB of folded text; a diff of it
    // would hold several copies of both sides, so diff gives each profile half the limit.
    let mut long_names = runs(&[TOP, FLAMEGRAPH], Expect::Succeeds);
    long_names.extend(runs(
        &[DIFF],
        refused(&["would take more than 32.0 MiB", "half the limit"]),
    ));
    case(
        "long_names_near_limit.pb.gz",
        "within the limit: 100 stacks of 150 frames of a 4 KiB name (61 MB of folded text)",
        &|file| std::fs::write(file, gzip(&many_frames(100, 150, 4096))).expect("write input"),
        long_names,
        Some(Expect::Succeeds),
    );
    case(
        "long_names_diff_near_limit.pb.gz",
        "within diff's half: 100 stacks of 75 frames of a 4 KiB name, diffed with itself",
        &|file| std::fs::write(file, gzip(&many_frames(100, 75, 4096))).expect("write input"),
        runs(&[DIFF], Expect::Succeeds),
        Some(Expect::Succeeds),
    );
    case(
        "many_spans.pb.gz",
        "within the limit: 10,000 samples under 1,024 spans, stacks up to 64 frames of 40-byte names, drawn by span",
        &|file| std::fs::write(file, gzip(&many_spans(10_000, 64, 40, 1024))).expect("write input"),
        runs(
            &[&["flamegraph", "{}", "--by-span", "-o", "/dev/null"], FLAMEGRAPH],
            Expect::Succeeds,
        ),
        Some(Expect::Succeeds),
    );
    case(
        "frames_near_limit.pb.gz",
        "within the limit: 4 stacks of 190,000 frames named \"\" (760,000 flamegraph frames)",
        &|file| std::fs::write(file, gzip(&many_frames(4, 190_000, 0))).expect("write input"),
        runs(&[TOP, FLAMEGRAPH], Expect::Succeeds),
        Some(Expect::Succeeds),
    );
    // Naming: every location gets its own copy of its names from the binary.
    let output = dir.join("symbolized.pb.gz");
    let symbolize: Vec<String> = ["symbolize", "{}", "--binary", CLI, "-o"]
        .iter()
        .map(|a| a.to_string())
        .chain([output.to_str().expect("UTF-8 path").to_owned()])
        .collect();
    case(
        "symbolize_many_locations.pb.gz",
        "200,000 locations in the heapwatch binary's code, to be named with its DWARF",
        &|file| {
            let (code, size) = code_in_file(Path::new(CLI));
            let mut raw = heap_profile_start(&[b"heapwatch"]);
            // One mapping: the binary's file offsets as addresses.
            raw.extend(bytes_field(
                3,
                &[
                    varint_field(1, 1),
                    varint_field(3, 1 << 40),
                    varint_field(5, 3),
                ]
                .concat(),
            ));
            for id in 1..=200_000u64 {
                let address = code + (id * 8) % size;
                raw.extend(bytes_field(
                    4,
                    &[
                        varint_field(1, id),
                        varint_field(2, 1),
                        varint_field(3, address),
                    ]
                    .concat(),
                ));
            }
            raw.extend(sample(&[1], &[1]));
            std::fs::write(file, gzip(&raw)).expect("write input");
        },
        vec![(
            symbolize,
            refused(&["would add more than 64.0 MiB of names", "--decode-limit"]),
        )],
        Some(Expect::Succeeds),
    );
    cases.push(Case {
        name: "/dev/zero",
        attack: "a file that never ends",
        file: PathBuf::from("/dev/zero"),
        runs: runs(&[TOP], TOO_BIG),
        library: None,
    });
    cases
}

// --- Children: the command from a small process, the library in a process of its own ------

/// `--spawn-cli STDERR_FILE -- ARGS…`: runs the command with a 1 GiB address space, waits for
/// it (killing it after [`CHILD_TIMEOUT`]) and prints `exit=… maxrss_kb=…`.
fn spawn_cli(stderr_file: &str, args: &[String]) -> ExitCode {
    let limit = libc::rlimit {
        rlim_cur: CHILD_MEMORY,
        rlim_max: CHILD_MEMORY,
    };
    // SAFETY: setrlimit reads the struct it is given; a process may always lower its own
    // limits, and the command started next inherits them.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        eprintln!("setrlimit: {}", std::io::Error::last_os_error());
        return ExitCode::FAILURE;
    }
    let stderr = std::fs::File::create(stderr_file).expect("create the stderr file");
    // Reaped by `wait4` below, not `Child::wait`: only `wait4` gives the child's rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(CLI)
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start heapwatch");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not yet reaped (std's `Child` is never waited on); the
        // pointers are to live locals.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            let exit = if timed_out {
                "timeout".to_owned()
            } else if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status).to_string()
            } else {
                format!("signal:{}", libc::WTERMSIG(status))
            };
            println!("exit={exit} maxrss_kb={}", usage.ru_maxrss);
            return ExitCode::SUCCESS;
        }
        if reaped < 0 {
            eprintln!("wait4: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
        if !timed_out && start.elapsed() > CHILD_TIMEOUT {
            timed_out = true;
            // SAFETY: kill on our own unreaped child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `--decode FILE`: decodes the file with the library and prints `peak=… ` and the outcome.
fn decode(file: &str) -> ExitCode {
    let bytes = std::fs::read(file).expect("read the input");
    let (result, peak) = metered(|| heapwatch::decode::read_pprof(&bytes).map(|p| p.samples.len()));
    match result {
        Ok(samples) => println!("peak={peak} ok: {samples} samples"),
        Err(e) => println!("peak={peak} error: {e}"),
    }
    ExitCode::SUCCESS
}

/// Runs this binary with `args`, killing it after twice [`CHILD_TIMEOUT`]; its stdout, or why
/// there is none.
fn run_self(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a child of this test");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            let output = child.wait_with_output().expect("the child's output");
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            return if status.success() && !stdout.is_empty() {
                Ok(stdout)
            } else {
                Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            };
        }
        if start.elapsed() > 2 * CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no result within {:?}", 2 * CHILD_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One run of the command: exit, peak resident size, its error output.
struct Run {
    exit: String,
    maxrss: u64,
    stderr: String,
}

fn run_cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Run, String> {
    let stderr_file = dir.join("stderr.txt");
    let mut command = vec![
        "--spawn-cli",
        stderr_file.to_str().expect("UTF-8 path"),
        "--",
    ];
    command.extend_from_slice(args);
    let mut child = Command::new(std::env::current_exe().expect("own path"));
    child.args(&command);
    for (name, value) in env {
        child.env(name, value);
    }
    let output = child.output().expect("start the spawner");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_owned)
    };
    let (Some(exit), Some(maxrss)) = (field("exit="), field("maxrss_kb=")) else {
        return Err(format!(
            "spawner failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    };
    let stderr = std::fs::read(&stderr_file).unwrap_or_default();
    Ok(Run {
        exit,
        maxrss: maxrss.parse::<u64>().unwrap_or(u64::MAX / 1024) * 1024,
        stderr: String::from_utf8_lossy(&stderr[..stderr.len().min(4000)]).into_owned(),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Checks one command on one hostile file; the failure, if any.
fn check_cli(
    dir: &Path,
    case: &Case,
    command: &[String],
    expect: Expect,
) -> Result<String, String> {
    let path = case.file.to_str().expect("UTF-8 path");
    let args: Vec<&str> = command
        .iter()
        .map(|a| if a == "{}" { path } else { a.as_str() })
        .collect();
    let started = Instant::now();
    let run = run_cli(dir, &args, &[])?;
    let seconds = started.elapsed().as_secs_f64();
    let line = run.stderr.trim_end();
    let summary = format!(
        "exit {}, peak RSS {}, {seconds:.1} s: {}",
        run.exit,
        mib(run.maxrss),
        line.chars().take(300).collect::<String>()
    );
    let mut wrong = Vec::new();
    if run.maxrss > PEAK_LIMIT {
        wrong.push(format!("a peak RSS at most {}", mib(PEAK_LIMIT)));
    }
    match expect {
        Expect::Succeeds => {
            if run.exit != "0" {
                wrong.push("success (exit 0)".to_owned());
            }
        }
        Expect::Refused(says) => {
            if run.exit != "1" {
                wrong.push("a clean error exit (1)".to_owned());
            }
            if line.lines().count() != 1
                || !line.starts_with("heapwatch: error: ")
                || line.len() > 1000
            {
                wrong.push("one short error line".to_owned());
            }
            for expected in says {
                if !line.contains(expected) {
                    wrong.push(format!("the error to say {expected:?}"));
                }
            }
        }
    }
    if wrong.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary} — expected {}", wrong.join(", ")))
    }
}

/// Checks the library's decoder on one hostile file, in a process of its own.
fn check_library(case: &Case, expect: Expect) -> Result<String, String> {
    let out = run_self(&["--decode", case.file.to_str().expect("UTF-8 path")])
        .map_err(|e| format!("the decoder crashed or hung ({e})"))?;
    let peak: u64 = out
        .strip_prefix("peak=")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unreadable result {out:?}"))?;
    let outcome = out.split_once(' ').map_or("", |(_, rest)| rest);
    let summary = format!(
        "peak allocated {}: {}",
        mib(peak),
        outcome.chars().take(300).collect::<String>()
    );
    let mut wrong = Vec::new();
    if peak > PEAK_LIMIT {
        wrong.push(format!("at most {} allocated", mib(PEAK_LIMIT)));
    }
    match expect {
        Expect::Succeeds => {
            if !outcome.starts_with("ok: ") {
                wrong.push("the profile read".to_owned());
            }
        }
        Expect::Refused(says) => {
            if !outcome.starts_with("error: ") {
                wrong.push("an error".to_owned());
            }
            for expected in says.iter().filter(|e| !e.starts_with("--")) {
                if !outcome.contains(expected) {
                    wrong.push(format!("the error to say {expected:?}"));
                }
            }
        }
    }
    if wrong.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary} — expected {}", wrong.join(", ")))
    }
}

/// A real profile reads with the default limit and is refused, saying so, below its size —
/// with the limit set by flag or by environment.
fn check_limit_setting(dir: &Path) -> Vec<Result<String, String>> {
    let file = dir.join("real.pb.gz");
    std::fs::write(&file, gzip(&real_profile())).expect("write input");
    let path = file.to_str().expect("UTF-8 path");
    let mut results = Vec::new();
    let mut check = |what: &str, args: &[&str], env: &[(&str, &str)], refused: bool| {
        let result = run_cli(dir, args, env).and_then(|run| {
            let summary = format!("{what}: exit {}, {}", run.exit, run.stderr.trim_end());
            let ok = if refused {
                run.exit == "1"
                    && run.stderr.contains("100 B")
                    && run.stderr.contains("--decode-limit")
            } else {
                run.exit == "0"
            };
            if ok {
                Ok(summary)
            } else {
                Err(format!(
                    "{summary} — expected {}",
                    if refused {
                        "a refusal naming the 100 B limit"
                    } else {
                        "success"
                    }
                ))
            }
        });
        results.push(result);
    };
    check("default limit", &["top", path], &[], false);
    check(
        "--decode-limit 100",
        &["top", path, "--decode-limit", "100"],
        &[],
        true,
    );
    check(
        "HEAPWATCH_DECODE_LIMIT=100",
        &["top", path],
        &[("HEAPWATCH_DECODE_LIMIT", "100")],
        true,
    );
    check(
        "flag over environment",
        &["--decode-limit", "1MiB", "top", path],
        &[("HEAPWATCH_DECODE_LIMIT", "100")],
        false,
    );
    results
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--spawn-cli") => return spawn_cli(&args[1], &args[3..]),
        Some("--decode") => return decode(&args[1]),
        _ => {}
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("heapwatch-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");

    let baseline = run_cli(&dir, &["--version"], &[]).expect("heapwatch --version");
    println!(
        "hostile_profiles: `heapwatch --version` peaks at {} (the floor of every figure below)",
        mib(baseline.maxrss)
    );
    let mut failures = Vec::new();
    for result in check_limit_setting(&dir) {
        match result {
            Ok(summary) => println!("  ok    decode limit: {summary}"),
            Err(e) => {
                println!("  FAIL  decode limit: {e}");
                failures.push(format!("decode limit: {e}"));
            }
        }
    }
    for case in cases(&dir) {
        let size = std::fs::metadata(&case.file).map_or(0, |m| m.len());
        assert!(
            case.name == "/dev/zero" || size < INPUT_LIMIT,
            "{} is {size} bytes: the bound is for inputs under 10 MB",
            case.name
        );
        println!("{} ({size} bytes): {}", case.name, case.attack);
        let mut results = Vec::new();
        for (command, expect) in &case.runs {
            results.push((
                command[0].as_str(),
                check_cli(&dir, &case, command, *expect),
            ));
        }
        if let Some(expect) = case.library {
            results.push(("library", check_library(&case, expect)));
        }
        for (what, result) in results {
            match result {
                Ok(summary) => println!("  ok    {what}: {summary}"),
                Err(e) => {
                    println!("  FAIL  {what}: {e}");
                    failures.push(format!("{} ({what}): {e}", case.name));
                }
            }
        }
        if case.name != "/dev/zero" {
            let _ = std::fs::remove_file(&case.file);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "hostile_profiles: {:.1} s, {} failures",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("hostile_profiles failed:\n{}", failures.join("\n"));
        ExitCode::FAILURE
    }
}
