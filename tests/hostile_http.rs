//! The built-in listener against clients that attack its time and its descriptors rather than
//! its parser (that is `http_fuzz.rs`): slow and silent clients, a full connection table, slow
//! readers of a large answer, accept failing at the descriptor limit, a forked child dropping
//! the listener it inherited, and the bearer token's scheme and comparison.
//!
//! The scenarios run one after another in one process (`harness = false`): the fork scenario
//! forks while no other test thread allocates, and the descriptor-limit scenario runs this
//! binary again as a child with a low `RLIMIT_NOFILE`. `cargo test --test hostile_http -- NAME`
//! runs the scenarios whose name contains NAME.
//!
//! Frame-pointer pass: not needed — the listener's time and descriptors; what the profile holds does not matter.

mod common;

use heapwatch::http::{Limits, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// Set in the environment of the child that runs the listener at its descriptor limit.
const EMFILE_CHILD: &str = "HOSTILE_HTTP_EMFILE_CHILD";

/// What a fresh `/metrics` must take, whatever the slow clients do.
const PROMPT: Duration = Duration::from_secs(1);

fn main() {
    if std::env::var_os(EMFILE_CHILD).is_some() {
        return emfile_child();
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: [(&str, fn()); 8] = [
        (
            "slow_clients_do_not_starve_metrics",
            slow_clients_do_not_starve_metrics,
        ),
        (
            "a_full_connection_table_still_answers",
            a_full_connection_table_still_answers,
        ),
        (
            "slow_readers_of_a_large_answer",
            slow_readers_of_a_large_answer,
        ),
        (
            "accept_at_the_descriptor_limit_backs_off",
            accept_at_the_descriptor_limit_backs_off,
        ),
        (
            "a_forked_child_drops_the_inherited_server",
            a_forked_child_drops_the_inherited_server,
        ),
        (
            "bearer_scheme_and_token_comparison",
            bearer_scheme_and_token_comparison,
        ),
        (
            "a_flood_does_not_evict_an_earlier_client",
            a_flood_does_not_evict_an_earlier_client,
        ),
        ("timeouts_of_any_length", timeouts_of_any_length),
    ];
    for (name, scenario) in scenarios {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            let started = Instant::now();
            println!("hostile_http: {name} ...");
            scenario();
            println!("hostile_http: {name} ok ({:.1?})", started.elapsed());
        }
    }
}

/// A listener on a port of its own with `limits`.
fn server(limits: Limits) -> Server {
    Server::builder()
        .addr("127.0.0.1:0")
        .limits(limits)
        .start()
        .expect("bind")
}

/// Sends `GET path` with `extra` header lines and reads the answer, all within `within`; the
/// status (`None` when none came in time) and how long the exchange took.
fn timed_get(addr: &str, path: &str, extra: &str, within: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let status = (|| {
        let mut stream = TcpStream::connect_timeout(&addr.parse().ok()?, within).ok()?;
        stream.set_read_timeout(Some(within)).ok()?;
        stream.set_write_timeout(Some(within)).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").ok()?;
        let mut response = Vec::new();
        // What came before an error (a reset after a 503, say) still tells the status.
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    })();
    (status, started.elapsed())
}

/// Asks for `/metrics` every 250 ms until `until`: each answer must be a 200 within [`PROMPT`].
/// Returns the slowest.
fn probe_metrics_until(addr: &str, until: Instant, while_what: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    loop {
        let (status, took) = timed_get(addr, "/metrics", "", Duration::from_secs(3));
        assert_eq!(
            status,
            Some(200),
            "probe {probes} of /metrics {while_what}: no 200 (after {took:.1?})"
        );
        assert!(
            took < PROMPT,
            "probe {probes} of /metrics {while_what} took {took:.1?}"
        );
        slowest = slowest.max(took);
        probes += 1;
        if Instant::now() >= until {
            return slowest;
        }
        // The probes' pace, not a wait for the server.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Twenty clients dribble their heads a byte at a time, five their bodies, ten send nothing:
/// more than the workers and the queue together. `/metrics` still answers within a second
/// throughout, and each slow client is cut off at the request deadline (5 s), not held for
/// as long as it keeps dribbling.
fn slow_clients_do_not_starve_metrics() {
    let limits = Limits::default();
    let server = server(limits);
    let addr = server.local_addr().to_string();
    assert_eq!(
        timed_get(&addr, "/metrics", "", Duration::from_secs(5)).0,
        Some(200)
    );

    let opened = Instant::now();
    let connect = |start: &[u8]| {
        let mut stream = TcpStream::connect(&addr).expect("connect a slow client");
        stream
            .write_all(start)
            .expect("send the start of a request");
        Arc::new(stream)
    };
    let mut dribbling = Vec::new();
    for _ in 0..20 {
        dribbling.push(connect(b"GET /metrics HTTP/1.1\r\nX-Slow: "));
    }
    for _ in 0..5 {
        dribbling.push(connect(
            b"GET /metrics HTTP/1.1\r\nContent-Length: 1000\r\n\r\n",
        ));
    }
    let silent: Vec<_> = (0..10).map(|_| connect(b"")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = {
        let dribbling = dribbling.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for stream in &dribbling {
                    // Fails once the server has cut the client off: that is expected.
                    let _ = (&**stream).write(b"a");
                }
                // The slow clients' pace: a byte each every 200 ms, well inside any per-read
                // timeout.
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let slowest = probe_metrics_until(
        &addr,
        opened + limits.read_timeout - Duration::from_millis(800),
        "with 35 slow clients connected",
    );
    println!("  slowest /metrics with 35 slow clients: {slowest:.1?}");

    // Each is cut off by the request deadline: a 408 (or a reset, when a dribbled byte was
    // still unread as the server closed), within a second of it.
    let cut_by = opened + limits.read_timeout + Duration::from_secs(1);
    for (i, stream) in dribbling.iter().chain(&silent).enumerate() {
        let left = cut_by.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut answer = Vec::new();
        match (&**stream).read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "slow client {i} still connected {:.1?} after it connected ({e})",
                opened.elapsed()
            ),
        }
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408 "),
            "slow client {i} got {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        );
    }
    stop.store(true, Ordering::Relaxed);
    dribbler.join().unwrap();
    assert_eq!(timed_get(&addr, "/metrics", "", PROMPT).0, Some(200));
}

/// A hundred silent connections, more than the listener keeps open at once: a fresh
/// `/metrics` still gets its 200 within a second, because a new connection closes the one
/// nearest its deadline rather than being turned away.
/// A client that connected before a flood of silent connections is not the one evicted to make
/// room for them: it still gets its answer when it sends its request.
fn a_flood_does_not_evict_an_earlier_client() {
    let server = server(Limits::default());
    let addr = server.local_addr().to_string();
    let mut early = TcpStream::connect(&addr).expect("connect the early client");
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // Accepted before the flood: the listener has answered the first request after it.
    assert_eq!(
        timed_get(&addr, "/metrics", "", Duration::from_secs(3)).0,
        Some(200)
    );
    let flood: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).expect("connect a silent client"))
        .collect();
    // Every flood connection accepted before the early client speaks.
    assert_eq!(
        timed_get(&addr, "/metrics", "", Duration::from_secs(3)).0,
        Some(200)
    );
    write!(early, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("send the request");
    let mut response = Vec::new();
    let _ = early.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the client that connected before 200 silent connections got {:?}",
        text.lines().next()
    );
    drop(flood);
}

/// `Duration::MAX` read and write timeouts ("no timeout") serve requests; they do not overflow
/// a deadline and take the listener down.
fn timeouts_of_any_length() {
    let server = server(Limits {
        read_timeout: Duration::MAX,
        write_timeout: Duration::MAX,
        ..Limits::default()
    });
    let addr = server.local_addr().to_string();
    for _ in 0..3 {
        let (status, _) = timed_get(&addr, "/metrics", "", Duration::from_secs(5));
        assert_eq!(status, Some(200), "/metrics with Duration::MAX timeouts");
    }
}

fn a_full_connection_table_still_answers() {
    let server = server(Limits::default());
    let addr = server.local_addr().to_string();
    let silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&addr).expect("connect a silent client"))
        .collect();
    let (status, took) = timed_get(&addr, "/metrics", "", Duration::from_secs(3));
    assert_eq!(status, Some(200), "/metrics behind 100 silent connections");
    assert!(
        took < PROMPT,
        "/metrics behind 100 silent connections took {took:.1?}"
    );
    println!("  /metrics behind 100 silent connections: {took:.1?}");
    drop(silent);
}

/// The stem of a dump set, so its summary file is listed and downloadable.
const BIG_DUMP: &str = "heapwatch-20260101T000000Z-1-0001-signal.json";
/// Larger than loopback's socket buffers hold, so a client that does not read stalls the
/// write.
const BIG_DUMP_BYTES: usize = 8 << 20;

/// Five clients ask for an 8 MiB download and never read it: `/metrics` still answers within a
/// second. Then one reads it a trickle at a time (160 KiB/s, 50 s for the whole): it is cut
/// off at the write deadline, not kept for as long as it keeps taking a little.
fn slow_readers_of_a_large_answer() {
    let dir = std::env::temp_dir().join(format!("heapwatch-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(BIG_DUMP), vec![b'x'; BIG_DUMP_BYTES]).unwrap();
    let started = |limits: Limits| {
        Server::builder()
            .addr("127.0.0.1:0")
            .dump_dir(&dir)
            .limits(limits)
            .start()
            .expect("bind")
    };
    let ask = |addr: &str| {
        let mut stream = TcpStream::connect(addr).expect("connect a slow reader");
        write!(
            stream,
            "GET /debug/heap/dumps/{BIG_DUMP} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        stream
    };

    let server = started(Limits::default());
    let addr = server.local_addr().to_string();
    let opened = Instant::now();
    let readers: Vec<TcpStream> = (0..5).map(|_| ask(&addr)).collect();
    let slowest = probe_metrics_until(
        &addr,
        opened + Duration::from_secs(2),
        "with 5 clients not reading an 8 MiB answer",
    );
    println!("  slowest /metrics with 5 stalled readers: {slowest:.1?}");
    drop(readers);
    drop(server);

    let write_timeout = Duration::from_secs(2);
    let server = started(Limits {
        write_timeout,
        ..Limits::default()
    });
    let mut trickle = ask(&server.local_addr().to_string());
    let asked = Instant::now();
    trickle
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut received = 0;
    let mut chunk = vec![0u8; 16 << 10];
    let ended = loop {
        match trickle.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("trickle reader: {e}"),
        }
        if asked.elapsed() > write_timeout * 3 {
            break false;
        }
        // The client's pace: 16 KiB every 100 ms.
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = asked.elapsed();
    assert!(
        ended,
        "a client taking 160 KiB/s is still being sent to {took:.1?} after it asked, with a write deadline of {write_timeout:?} ({received} bytes so far)"
    );
    assert!(received < BIG_DUMP_BYTES, "the whole answer went out");
    assert!(
        took < write_timeout + Duration::from_millis(1500),
        "cut off only after {took:.1?}"
    );
    println!("  trickle reader cut off after {took:.1?}, {received} bytes");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A child process, killed and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CPU time `pid` has used so far (user and system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of proc(5); 3 (the state) is the first here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// The listener in a child at its descriptor limit, with connections waiting that it cannot
/// accept: it uses under a fifth of a core (the accept loop spun at a whole one), and once
/// descriptors are free again `/metrics` answers.
fn accept_at_the_descriptor_limit_backs_off() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(EMFILE_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run this test as the descriptor-limit child");
    let mut to_child = child.stdin.take().unwrap();
    let from_child = BufReader::new(child.stdout.take().unwrap());
    let pid = child.id();
    let child = Running(child);
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in from_child.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        said.recv_timeout(Duration::from_secs(20))
            .expect("a line from the descriptor-limit child")
    };
    let first = next_line();
    let (addr, hoarded) = first.split_once(' ').expect("ADDR HOARDED");
    println!("  child {pid} at its limit, holding {hoarded} spare descriptors");

    // Completed connections the child cannot accept: each accept fails with EMFILE while they
    // wait.
    let waiting: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(addr).expect("connect to the child"))
        .collect();
    let (cpu_before, measured_from) = (cpu_time(pid), Instant::now());
    // The window over which CPU use is measured.
    std::thread::sleep(Duration::from_secs(1));
    let share = (cpu_time(pid) - cpu_before).as_secs_f64() / measured_from.elapsed().as_secs_f64();
    println!("  listener at EMFILE used {:.0} % of a core", share * 100.0);
    assert!(
        share < 0.2,
        "the listener at its descriptor limit used {:.0} % of a core",
        share * 100.0
    );

    writeln!(to_child, "free").unwrap();
    assert_eq!(next_line(), "freed");
    let (status, took) = timed_get(addr, "/metrics", "", Duration::from_secs(5));
    assert_eq!(
        status,
        Some(200),
        "/metrics once descriptors are free again"
    );
    // The longest pause between accepts is a second.
    assert!(
        took < Duration::from_millis(2500),
        "/metrics took {took:.1?} to recover"
    );
    println!("  /metrics answered {took:.1?} after descriptors were freed");
    drop(waiting);
    drop(to_child);
    let mut child = child;
    assert!(child.0.wait().unwrap().success(), "the child failed");
}

/// The child's side: start the listener, lower the descriptor limit and take every descriptor
/// left, report `ADDR HOARDED`, and free them when told.
fn emfile_child() {
    let server = server(Limits::default());
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the rlimit struct passed by reference.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = open_now + 16;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut hoard = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hoard.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
    println!("{} {}", server.local_addr(), hoard.len());
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    drop(hoard);
    println!("freed");
    // Until the parent closes stdin.
    while stdin.read_line(&mut line).is_ok_and(|n| n > 0) {}
    drop(server);
}

/// A forked child drops the listener it inherited (whose threads exist only in the parent),
/// starts its own and gets `/metrics` from it, and exits 0; the parent's listener still
/// answers.
fn a_forked_child_drops_the_inherited_server() {
    let inherited = server(Limits::default());
    let addr = inherited.local_addr().to_string();
    assert_eq!(common::http_get(&addr, "/metrics").0, 200);
    // SAFETY: the other threads are the listener's, idle in their waits and holding no lock
    // the child takes; the child ends with _exit, never returning into the parent's stack.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let passed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            drop(inherited);
            let own = server(Limits::default());
            let (status, body) = common::http_get(&own.local_addr().to_string(), "/metrics");
            assert_eq!(status, 200, "the child's own listener");
            assert!(String::from_utf8_lossy(&body).contains("heapwatch_heap_live_bytes"));
            drop(own);
        }))
        .is_ok();
        // SAFETY: ends the child at once, without running the parent's exit handlers twice.
        unsafe { libc::_exit(if passed { 0 } else { 1 }) }
    }
    let status = common::wait_for_child(pid, Duration::from_secs(10), |_| {});
    assert_eq!(
        status,
        Some(0),
        "the forked child (None: still running after 10 s, killed)"
    );
    assert_eq!(
        common::http_get(&addr, "/metrics").0,
        200,
        "the parent's listener after the child dropped its copy"
    );
}

/// The `Bearer` scheme in any case is accepted with the right token; wrong tokens shorter,
/// longer and of the same length are refused, as are other schemes.
fn bearer_scheme_and_token_comparison() {
    let server = Server::builder()
        .addr("127.0.0.1:0")
        .token("s3cret")
        .start()
        .expect("bind");
    let addr = server.local_addr().to_string();
    let status = |authorization: &str| {
        let extra = format!("Authorization: {authorization}\r\n");
        timed_get(&addr, "/metrics", &extra, Duration::from_secs(5)).0
    };
    for accepted in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        assert_eq!(status(accepted), Some(200), "{accepted:?}");
    }
    for refused in [
        "Bearer s3creX",
        "Bearer S3CRET",
        "Bearer s3cre",
        "Bearer s3crets",
        "Bearer s3cret s3cret",
        "Bearer ",
        "Bearer",
        "Bearers3cret",
        "Basic s3cret",
        "s3cret",
    ] {
        assert_eq!(status(refused), Some(401), "{refused:?}");
    }
}
