//! A fast leak into a real memory cgroup's limit, with the realistic service: does heapwatch
//! get a dump set onto disk before the kernel's OOM kill, and does the evidence name the leak
//! once the next instance has started?
//!
//! The matrix: leak rate {256 MiB/s, 1 GiB/s} × cgroup limit {96 MiB, 160 MiB}, each cell run
//! `HEAPWATCH_FAST_LEAK_RUNS` times (default 2; `scripts/fast_leak_matrix.sh` runs 20). Each
//! run makes a fresh child memory cgroup (the limit, no swap) and dump directory, starts the
//! release `examples/orders_service` in it with the watch's defaults (only `HEAPWATCH_KEEP=20`
//! set), and leaks from here over HTTP: `GET /orders/bulk/64`, 4 MiB kept a request, paced to
//! the cell's rate over a few keep-alive connections, until the kernel kills it (60 s at most).
//! Then:
//! - the kill was a SIGKILL, and an OOM kill by the cgroup's count (where the kernel keeps one);
//! - at least one complete dump set, each written (summary time and file mtime) before the
//!   kill, for `threshold` or `eta`, each profile read by `go tool pprof -symbolize=none`;
//! - the restart: the same binary in the same cgroup and directory for 4 s, no traffic, ends
//!   normally and warns about the previous instance naming `retain_session_blob`; the newest
//!   set's profile, copied where no binary is at hand, has `retain_session_blob` first under
//!   `go tool pprof -symbolize=none -top`, and its summary's first top site names it.
//!
//! Failures are collected per run; a table per cell (runs, killed, a dump before the kill,
//! named after the restart, median time from the first leaking request to the kill, median
//! achieved leak rate) and `N passed, M failed` (runs) end the output; any failed run fails
//! the test. Where it cannot run (not root, no memory controller) it says so loudly and passes,
//! unless `HEAPWATCH_REQUIRE_PRIVILEGED=1`. `HEAPWATCH_FAST_LEAK_KEEP=1` keeps the scratch
//! directories (dumps, the service's standard error) for a look afterwards.
//!
//! Frame-pointer pass: not needed — the service as it ships (no frame pointers); naming under the frame-pointer walk is checked by `demo_outputs`, `source_lines` and `mixed_service`.

mod common;

use common::cgroup::{self, ChildCgroup};
use heapwatch::watch::{list_sets, read_summary, Cgroup, DumpSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TEST: &str = "fast_leak";
const MIB: u64 = 1 << 20;
/// Orders a leaking request imports: 64 × 64 KiB session blobs = 4 MiB kept a request.
const BULK: u64 = 64;
const REQUEST_BYTES: u64 = BULK * 64 * 1024;
/// The cells' leak rates, bytes a second.
const RATES: [u64; 2] = [256 * MIB, 1024 * MIB];
/// The cells' cgroup limits.
const LIMITS: [u64; 2] = [96 * MIB, 160 * MIB];
/// Runs per cell when `HEAPWATCH_FAST_LEAK_RUNS` is unset.
const DEFAULT_RUNS: usize = 2;
/// Keep-alive connections the leak is sent over (the service has a worker per core).
const CONNECTIONS: usize = 4;
/// How long the service may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the leak may go on before the run fails for want of a kill.
const KILL_TIMEOUT: Duration = Duration::from_secs(60);
/// The restarted instance's lifetime (`--seconds`), and how long it may take beyond that.
const RESTART_SECONDS: u64 = 4;
const RESTART_SLACK: Duration = Duration::from_secs(20);
/// The leaking helper, inlined into the handler in release builds.
const HELPER: &str = "retain_session_blob";

/// One cell of the matrix.
#[derive(Clone, Copy)]
struct Cell {
    rate: u64,
    limit: u64,
}

impl Cell {
    fn name(&self) -> String {
        format!("{} MiB/s into {} MiB", self.rate / MIB, self.limit / MIB)
    }
}

/// What one run measured, and what went wrong in it.
#[derive(Default)]
struct Run {
    killed: bool,
    dump_before_kill: bool,
    named_after_restart: bool,
    /// From the first leaking request to the kill.
    time_to_kill: Option<Duration>,
    /// From the service's start to the kill.
    start_to_kill: Option<Duration>,
    /// Bytes leaked by answered requests over the time they took, bytes a second.
    rate: Option<f64>,
    /// The same over the first half of the answers.
    early_rate: Option<f64>,
    failures: Vec<String>,
}

impl Run {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(message());
        }
    }
}

fn main() {
    let Some(parent) = cgroup::parent_or_cannot_run(TEST) else {
        return;
    };
    // Whether a child cgroup can be made at all, before anything is built.
    if let Err(e) = ChildCgroup::create(&parent, LIMITS[0]) {
        return cgroup::cannot_run(TEST, &format!("cannot set up a child memory cgroup: {e}"));
    }
    common::require_tool("go", "golang-go");
    let runs: usize = std::env::var("HEAPWATCH_FAST_LEAK_RUNS")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("HEAPWATCH_FAST_LEAK_RUNS={v:?} is not a number"))
        })
        .unwrap_or(DEFAULT_RUNS);
    let keep = std::env::var("HEAPWATCH_FAST_LEAK_KEEP").as_deref() == Ok("1");
    let binary = common::example_binary("orders_service");
    let root = std::env::temp_dir().join(format!("heapwatch-fast-leak-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("make the scratch directory");
    let cells: Vec<Cell> = RATES
        .iter()
        .flat_map(|&rate| LIMITS.iter().map(move |&limit| Cell { rate, limit }))
        .collect();
    println!(
        "{TEST}: {runs} runs per cell, {} cells, cgroups under {} ({:?}), scratch {}",
        cells.len(),
        parent.dir.display(),
        parent.version,
        root.display()
    );

    let started = Instant::now();
    let mut results: Vec<Vec<Run>> = cells.iter().map(|_| Vec::new()).collect();
    // Runs interleaved across cells, so that whatever drifts on the machine is shared.
    for index in 0..runs {
        for (c, cell) in cells.iter().enumerate() {
            let scratch = root.join(format!(
                "{}mibs-{}mib-{index}",
                cell.rate / MIB,
                cell.limit / MIB
            ));
            let run = run_once(&parent, &binary, *cell, &scratch);
            report_run(cell, index, &run);
            results[c].push(run);
        }
    }

    print_table(&cells, &results);
    if keep {
        println!("{TEST}: scratch kept in {}", root.display());
    } else {
        let _ = fs::remove_dir_all(&root);
    }
    let failed: usize = results
        .iter()
        .flatten()
        .filter(|r| !r.failures.is_empty())
        .count();
    let total: usize = results.iter().map(Vec::len).sum();
    println!("{TEST}: {:.0} s in all", started.elapsed().as_secs_f64());
    println!("{} passed, {failed} failed", total - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

/// One run of a cell, in `scratch` (made fresh).
fn run_once(parent: &Cgroup, binary: &Path, cell: Cell, scratch: &Path) -> Run {
    let mut run = Run::default();
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).expect("make the run's scratch directory");
    let dumps = scratch.join("dumps");
    let cgroup = match ChildCgroup::create(parent, cell.limit) {
        Ok(cgroup) => cgroup,
        Err(e) => {
            run.failures
                .push(format!("cannot make the child cgroup: {e}"));
            return run;
        }
    };

    let stderr_path = scratch.join("service.stderr");
    let Some(kill_ms) = leak_until_killed(binary, &cgroup, &dumps, &stderr_path, cell, &mut run)
    else {
        return run;
    };
    check_evidence(&dumps, scratch, kill_ms, &mut run);
    restart_and_check_names(binary, &cgroup, &dumps, scratch, &mut run);
    run
}

/// Starts the service in `cgroup` and leaks into it at the cell's rate until it dies; the
/// time of its death in ms since the epoch, or `None` when the run cannot go on.
fn leak_until_killed(
    binary: &Path,
    cgroup: &ChildCgroup,
    dumps: &Path,
    stderr_path: &Path,
    cell: Cell,
    run: &mut Run,
) -> Option<u64> {
    let spawned = Instant::now();
    let mut child = match start_service(binary, cgroup, dumps, stderr_path, &[], true) {
        Ok(child) => child,
        Err(e) => {
            run.failures.push(e);
            return None;
        }
    };
    let addr = match listening_addr(&mut child) {
        Ok(addr) => addr,
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().ok();
            run.failures.push(format!(
                "the service did not start in {} MiB ({e}; it ended with {status:?}); its standard error ends:\n{}",
                cell.limit / MIB,
                tail(stderr_path, 15)
            ));
            return None;
        }
    };
    let started_after = spawned.elapsed();

    let traffic = Traffic::start(&addr, cell.rate);
    let end = wait_for_death(&mut child, &traffic);
    let leaked = traffic.stop();
    let (status, killed_at, kill_ms) = match end {
        End::Died(status, at, ms) => (status, at, ms),
        End::Alive | End::TrafficStopped => {
            let why = if matches!(end, End::Alive) {
                format!("alive {KILL_TIMEOUT:?} after the leak began")
            } else {
                format!(
                    "alive after every connection gave up ({})",
                    leaked.errors.join("; ")
                )
            };
            run.failures.push(format!(
                "not killed: {why}, so killed by the test; {} requests answered; its standard error ends:\n{}",
                leaked.answered(),
                indent(&tail(stderr_path, 15))
            ));
            return None;
        }
    };
    run.time_to_kill = Some(killed_at.saturating_duration_since(leaked.start));
    run.start_to_kill = Some(killed_at.saturating_duration_since(spawned));
    run.rate = leaked.rate();
    run.early_rate = leaked.early_rate();
    run.killed = status.is_some_and(|s| s.signal() == Some(libc::SIGKILL));
    println!(
        "{TEST}: {}: listening {} ms after its start; {} requests answered ({} MiB; at ms {}), ended with {status:?} {} ms after the first leaking request (cgroup oom_kill count {:?}); standard error ends:\n{}",
        cell.name(),
        started_after.as_millis(),
        leaked.answered(),
        leaked.answered() * REQUEST_BYTES / MIB,
        leaked.timeline(),
        run.time_to_kill.unwrap_or_default().as_millis(),
        cgroup.oom_kills(),
        indent(&tail(stderr_path, 8))
    );
    let oom_kills = cgroup.oom_kills();
    run.check(run.killed && oom_kills.is_none_or(|n| n >= 1), || {
        format!("not killed by the kernel's OOM killer: {status:?}, the cgroup's oom_kill count {oom_kills:?}")
    });
    // A refusal is not the service dying: that is a failure whenever it came.
    if let Some(error) = leaked.errors.iter().find(|e| e.starts_with("status")) {
        run.failures.push(error.clone());
    }
    Some(kill_ms)
}

/// Starts `binary --addr 127.0.0.1:0 --dir DUMPS ARGS` in `cgroup` with the watch's defaults
/// but `HEAPWATCH_KEEP=20`, its standard error into `stderr_path`, its standard output piped
/// when `stdout` is wanted.
fn start_service(
    binary: &Path,
    cgroup: &ChildCgroup,
    dumps: &Path,
    stderr_path: &Path,
    args: &[&str],
    stdout: bool,
) -> Result<Child, String> {
    let stderr =
        File::create(stderr_path).map_err(|e| format!("create {}: {e}", stderr_path.display()))?;
    let mut command = Command::new(binary);
    command
        .args(["--addr", "127.0.0.1:0", "--dir"])
        .arg(dumps)
        .args(args)
        .current_dir(dumps.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(stderr);
    // The defaults a service runs with: nothing of the test's environment.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("HEAPWATCH") || name.starts_with("ORDERS_") {
            command.env_remove(&*name);
        }
    }
    command.env("HEAPWATCH_KEEP", "20");
    cgroup.place(&mut command);
    command
        .spawn()
        .map_err(|e| format!("start {} in the cgroup: {e}", binary.display()))
}

/// The address of the `listening on http://ADDR` line the service prints first.
fn listening_addr(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("no standard output")?;
    let (line, listening) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = line.send(lines.next().and_then(Result::ok).unwrap_or_default());
        lines.for_each(drop);
    });
    let line = listening
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| format!("no line on standard output within {START_TIMEOUT:?}"))?;
    line.trim()
        .strip_prefix("listening on http://")
        .map(str::to_owned)
        .ok_or_else(|| format!("no `listening on` line (got {line:?})"))
}

/// How the leaking instance ended.
enum End {
    /// It died by itself (the status), seen dead at the instant, in ms since the epoch.
    Died(Option<ExitStatus>, Instant, u64),
    /// Still alive [`KILL_TIMEOUT`] after the leak began: killed by the test.
    Alive,
    /// Every connection gave up while it lived: killed by the test.
    TrafficStopped,
}

/// Waits for the service to die while the traffic runs; kills it after [`KILL_TIMEOUT`], or
/// when every connection gave up and it still lives a second later.
fn wait_for_death(child: &mut Child, traffic: &Traffic) -> End {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) } as libc::c_int;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let mut gave_up_at = None;
    let end = loop {
        let mut ready = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, borrowed for the call.
        if unsafe { libc::poll(&mut ready, 1, 20) } == 1 {
            break End::Died(None, Instant::now(), now_ms());
        }
        if traffic.shared.start.elapsed() > KILL_TIMEOUT {
            break End::Alive;
        }
        if traffic.shared.connections_left.load(Ordering::Acquire) == 0 {
            // Every connection failed: the service may be dying; give it a second.
            let at = *gave_up_at.get_or_insert_with(Instant::now);
            if at.elapsed() > Duration::from_secs(1) {
                break End::TrafficStopped;
            }
        }
    };
    // SAFETY: pidfd is ours and closed once.
    unsafe { libc::close(pidfd) };
    match end {
        End::Died(_, at, ms) => End::Died(child.wait().ok(), at, ms),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            other
        }
    }
}

/// The leak: `GET /orders/bulk/64` at a paced rate over [`CONNECTIONS`] keep-alive
/// connections, each request scheduled at `start + n / requests-per-second`.
struct Traffic {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Shared {
    start: Instant,
    interval: Duration,
    next: AtomicU64,
    /// When each answer came, from `start`.
    answers: Mutex<Vec<Duration>>,
    connections_left: AtomicUsize,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
}

/// What the traffic achieved.
struct Leaked {
    start: Instant,
    /// When each answer came, from `start`, in order.
    answers: Vec<Duration>,
    /// Why connections ended: the service's death, normally.
    errors: Vec<String>,
}

impl Leaked {
    fn answered(&self) -> u64 {
        self.answers.len() as u64
    }

    /// Bytes kept by answered requests over the time from the first request to the last
    /// answer, bytes a second.
    fn rate(&self) -> Option<f64> {
        self.rate_over(self.answers.len())
    }

    /// The same over the first half of the answers, before the approach of the limit (where
    /// the kernel reclaims and the service stalls) slows them.
    fn early_rate(&self) -> Option<f64> {
        self.rate_over(self.answers.len() / 2)
    }

    fn rate_over(&self, answers: usize) -> Option<f64> {
        let last = *self.answers.get(answers.checked_sub(1)?)?;
        (answers >= 2 && !last.is_zero())
            .then(|| (answers as u64 * REQUEST_BYTES) as f64 / last.as_secs_f64())
    }

    /// The answers' times in ms, for the log.
    fn timeline(&self) -> String {
        let ms: Vec<String> = self
            .answers
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect();
        ms.join(" ")
    }
}

impl Traffic {
    fn start(addr: &str, rate: u64) -> Traffic {
        let per_second = rate / REQUEST_BYTES;
        let shared = Arc::new(Shared {
            start: Instant::now(),
            interval: Duration::from_nanos(1_000_000_000 / per_second),
            next: AtomicU64::new(0),
            answers: Mutex::new(Vec::new()),
            connections_left: AtomicUsize::new(CONNECTIONS),
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        });
        let threads = (0..CONNECTIONS)
            .map(|_| {
                let shared = Arc::clone(&shared);
                let addr = addr.to_owned();
                std::thread::spawn(move || {
                    if let Err(e) = connection(&addr, &shared) {
                        shared.errors.lock().unwrap().push(e);
                    }
                    shared.connections_left.fetch_sub(1, Ordering::AcqRel);
                })
            })
            .collect();
        Traffic { shared, threads }
    }

    fn stop(self) -> Leaked {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
        let errors = self.shared.errors.lock().unwrap().clone();
        let mut answers = self.shared.answers.lock().unwrap().clone();
        answers.sort();
        Leaked {
            start: self.shared.start,
            answers,
            errors,
        }
    }
}

/// One keep-alive connection sending its share of the schedule until told to stop or the
/// connection fails (the service died, normally).
fn connection(addr: &str, shared: &Shared) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let mut reader = BufReader::new(stream);
    let request = format!("GET /orders/bulk/{BULK} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    while !shared.stop.load(Ordering::Acquire) {
        let n = shared.next.fetch_add(1, Ordering::AcqRel);
        let due = shared.start + shared.interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let status = read_response(&mut reader)?;
        if status != 200 {
            return Err(format!("status {status} for GET /orders/bulk/{BULK}"));
        }
        let at = shared.start.elapsed();
        shared.answers.lock().unwrap().push(at);
    }
    Ok(())
}

/// Reads one HTTP/1.1 response with a `content-length`; its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<u16, String> {
    let mut line = String::new();
    let mut status = None;
    let mut length = None;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".to_owned());
        }
        let text = line.trim_end();
        if status.is_none() {
            status = text.split(' ').nth(1).and_then(|s| s.parse().ok());
            if status.is_none() {
                return Err(format!("not a status line: {text:?}"));
            }
        } else if text.is_empty() {
            break;
        } else if let Some((name, value)) = text.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.ok_or("a response without content-length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read the body: {e}"))?;
    status.ok_or_else(|| "no status".to_owned())
}

/// The dump sets the killed instance left: complete, written before the kill, for a
/// threshold or a prediction, each profile readable by `go tool pprof`.
fn check_evidence(dumps: &Path, scratch: &Path, kill_ms: u64, run: &mut Run) {
    let sets = list_sets(dumps);
    run.check(!sets.is_empty(), || {
        "no complete dump set before the kill".to_owned()
    });
    for set in &sets {
        let summary = match read_summary(set) {
            Ok(summary) => summary,
            Err(e) => {
                run.failures
                    .push(format!("{}: summary unreadable: {e}", set.stem));
                continue;
            }
        };
        let (named, symbolizer_bytes) = raw_fields(set);
        let mtime_ms = fs::metadata(set.summary())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_millis() as u64);
        let rows = common::try_go_pprof(
            &["-symbolize=none", "-top", "-sample_index=inuse_space"],
            &set.profile(),
            scratch,
        )
        .map(|text| common::top_rows(&text));
        let first_row = match &rows {
            Ok(rows) => rows.first().map(|(_, function)| function.clone()),
            Err(_) => None,
        };
        println!(
            "{TEST}:   {}: {} ({}), working set {} of {} MiB, named {named}, symbolizer_bytes {symbolizer_bytes}, written {} ms before the kill, top site {:?}, pprof first row {first_row:?}",
            set.stem,
            summary.reason,
            summary.reason_detail,
            summary.working_set_bytes.unwrap_or(0) / MIB,
            summary.limit_bytes.unwrap_or(0) / MIB,
            kill_ms as i64 - summary.unix_ms as i64,
            summary.top_sites.first().map(|s| s.function.as_str()),
        );
        let before = summary.unix_ms <= kill_ms && mtime_ms <= kill_ms;
        run.dump_before_kill |= before;
        run.check(before, || {
            format!(
                "{}: written at {} (summary) / {mtime_ms} (mtime), after the kill at {kill_ms}",
                set.stem, summary.unix_ms
            )
        });
        run.check(
            summary.reason == "threshold" || summary.reason == "eta",
            || format!("{}: reason {:?}", set.stem, summary.reason),
        );
        match rows {
            Ok(rows) => run.check(!rows.is_empty(), || {
                format!("{}: go tool pprof -top lists no row", set.stem)
            }),
            Err(e) => run.failures.push(format!("{}: {e}", set.stem)),
        }
    }
}

/// The summary's `named` and `symbolizer_bytes`, read as JSON (printed as `-` where absent).
fn raw_fields(set: &DumpSet) -> (String, String) {
    let value: serde_json::Value = fs::read(set.summary())
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default();
    let field = |name: &str| {
        value
            .get(name)
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    };
    (field("named"), field("symbolizer_bytes"))
}

/// The next instance in the same cgroup and directory, 4 s without traffic; then the newest
/// set must name the leak where no binary is at hand.
fn restart_and_check_names(
    binary: &Path,
    cgroup: &ChildCgroup,
    dumps: &Path,
    scratch: &Path,
    run: &mut Run,
) {
    let stderr_path = scratch.join("restart.stderr");
    let seconds = RESTART_SECONDS.to_string();
    let mut child = match start_service(
        binary,
        cgroup,
        dumps,
        &stderr_path,
        &["--seconds", &seconds],
        false,
    ) {
        Ok(child) => child,
        Err(e) => return run.failures.push(format!("restart: {e}")),
    };
    let deadline = Instant::now() + Duration::from_secs(RESTART_SECONDS) + RESTART_SLACK;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let log = fs::read_to_string(&stderr_path).unwrap_or_default();
    run.check(status.is_some_and(|s| s.success()), || {
        format!(
            "the restarted instance did not end normally ({status:?}); its standard error:\n{}",
            indent(&log)
        )
    });
    let warning = log.lines().find(|l| l.contains("previous instance"));
    println!(
        "{TEST}:   restart: {}",
        warning.unwrap_or("no `previous instance` line")
    );
    run.check(
        warning.is_some_and(|l| l.contains("WARN") && l.contains(HELPER)),
        || format!("the restarted instance's warning does not name {HELPER}: {warning:?}"),
    );

    let Some(newest) = list_sets(dumps).pop() else {
        return run
            .failures
            .push("no dump set to name after the restart".to_owned());
    };
    let offline = scratch.join("offline");
    let _ = fs::remove_dir_all(&offline);
    let copy = offline.join(format!("{}.pb.gz", newest.stem));
    let first_row = fs::create_dir_all(&offline)
        .and_then(|()| fs::copy(newest.profile(), &copy))
        .map_err(|e| format!("copy {}: {e}", newest.profile().display()))
        .and_then(|_| {
            common::try_go_pprof(
                &[
                    "-symbolize=none",
                    "-top",
                    "-nodecount=20",
                    "-sample_index=inuse_space",
                ],
                &copy,
                &offline,
            )
        })
        .map(|text| {
            common::top_rows(&text)
                .into_iter()
                .next()
                .map(|(_, function)| function)
        });
    let pprof_names = matches!(&first_row, Ok(Some(f)) if f.contains(HELPER));
    let summary = read_summary(&newest);
    let top_site = summary
        .as_ref()
        .ok()
        .and_then(|s| s.top_sites.first())
        .map(|s| s.function.clone());
    let summary_names = top_site.as_deref().is_some_and(|f| f.contains(HELPER));
    println!(
        "{TEST}:   after the restart, newest {}: named {}, pprof's first row {first_row:?}, first top site {top_site:?}",
        newest.stem,
        raw_fields(&newest).0
    );
    run.check(pprof_names, || {
        format!(
            "after the restart, go tool pprof -symbolize=none -top on {} has first row {first_row:?}, not {HELPER}",
            newest.stem
        )
    });
    run.check(summary_names, || {
        format!(
            "after the restart, {}'s first top site is {top_site:?}, not {HELPER}",
            newest.stem
        )
    });
    run.named_after_restart = pprof_names && summary_names;
}

fn report_run(cell: &Cell, index: usize, run: &Run) {
    let verdict = if run.failures.is_empty() {
        "passed".to_owned()
    } else {
        format!(
            "FAILED:\n{}",
            run.failures
                .iter()
                .map(|f| indent(&format!("- {f}")))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    println!(
        "{TEST}: {} run {}: killed {}, dump before the kill {}, named after the restart {}, kill {} ms after the first leaking request ({} ms after start), {} MiB/s achieved ({} over the first half of the answers): {verdict}\n",
        cell.name(),
        index + 1,
        yes(run.killed),
        yes(run.dump_before_kill),
        yes(run.named_after_restart),
        run.time_to_kill.map_or("-".into(), |d| d.as_millis().to_string()),
        run.start_to_kill.map_or("-".into(), |d| d.as_millis().to_string()),
        run.rate.map_or("-".into(), |r| format!("{:.0}", r / MIB as f64)),
        run.early_rate.map_or("-".into(), |r| format!("{:.0}", r / MIB as f64)),
    );
}

fn print_table(cells: &[Cell], results: &[Vec<Run>]) {
    println!(
        "\n{TEST}: {:>10} {:>8} {:>5} {:>7} {:>10} {:>12} {:>14} {:>10} {:>13}",
        "rate",
        "limit",
        "runs",
        "killed",
        "dump<kill",
        "named later",
        "kill (ms) med",
        "MiB/s med",
        "(first half)"
    );
    for (cell, runs) in cells.iter().zip(results) {
        let count = |f: fn(&Run) -> bool| runs.iter().filter(|r| f(r)).count();
        let kill = median(
            runs.iter()
                .filter_map(|r| r.time_to_kill)
                .map(|d| d.as_secs_f64() * 1e3),
        );
        let rate = median(runs.iter().filter_map(|r| r.rate).map(|r| r / MIB as f64));
        let early = median(
            runs.iter()
                .filter_map(|r| r.early_rate)
                .map(|r| r / MIB as f64),
        );
        println!(
            "{TEST}: {:>4} MiB/s {:>4} MiB {:>5} {:>7} {:>10} {:>12} {:>14} {:>10} {:>13}",
            cell.rate / MIB,
            cell.limit / MIB,
            runs.len(),
            count(|r| r.killed),
            count(|r| r.dump_before_kill),
            count(|r| r.named_after_restart),
            kill.map_or("-".into(), |v| format!("{v:.0}")),
            rate.map_or("-".into(), |v| format!("{v:.0}")),
            early.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    println!(
        "{TEST}: kill (ms): from the first leaking request; MiB/s: kept by answered requests, over all of them and over the first half\n"
    );
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
