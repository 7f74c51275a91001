//! Helpers shared by the integration tests: the crate's example binaries, `go tool pprof`,
//! waiting for a forked child, and child memory cgroups ([`cgroup`]).

#![allow(dead_code)]

pub mod cgroup;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of example `name`, built now (cargo does nothing if it is up to date) in the same
/// profile and target directory as the running test, so a test never runs a stale example.
pub fn example_binary(name: &str) -> PathBuf {
    let profile_dir = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target directory");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name, "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    // Exactly the features this test was built with (all of them), so cargo reuses the library and
    // the examples `cargo test` already built instead of rebuilding them for a different set.
    let features: Vec<&str> = [
        ("jemalloc", cfg!(feature = "jemalloc")),
        ("flamegraph", cfg!(feature = "flamegraph")),
        ("dwarf", cfg!(feature = "dwarf")),
        ("http", cfg!(feature = "http")),
        ("axum", cfg!(feature = "axum")),
        ("cli", cfg!(feature = "cli")),
        ("cached-unwinder", cfg!(feature = "cached-unwinder")),
        ("tracing", cfg!(feature = "tracing")),
        ("criterion", cfg!(feature = "criterion")),
        ("cpu", cfg!(feature = "cpu")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    build
        .arg("--no-default-features")
        .arg("--features")
        .arg(features.join(","));
    let status = build.status().expect("run cargo to build an example");
    assert!(status.success(), "building example {name} failed");
    profile_dir.join("examples").join(name)
}

/// `go tool pprof -top` as (function, flat) rows, in its order. Panics, saying what to
/// install, when Go is missing: these tests never pass without the real client.
pub fn pprof_top(profile: &Path, sample_index: &str) -> Vec<(String, i64)> {
    let mut args = vec![
        "-top".to_owned(),
        "-nodefraction=0".to_owned(),
        "-nodecount=1000".to_owned(),
        format!("-sample_index={sample_index}"),
    ];
    if sample_index.ends_with("space") {
        args.push("-unit=B".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let source = profile.to_str().expect("a UTF-8 profile path");
    let fetched_to = profile.parent().unwrap_or(Path::new("."));
    top_rows(&go_pprof(&args, source, fetched_to))
        .into_iter()
        .filter_map(|(flat, function)| Some((function, flat.trim_end_matches('B').parse().ok()?)))
        .collect()
}

/// The standard output of `go tool pprof ARGS SOURCE`, where the source is a profile file or
/// an `http://` URL (a fetched profile is saved under `fetched_to`, not in `$HOME/pprof`).
/// Panics with pprof's error output when it fails, and, saying what to install, when Go is
/// missing.
pub fn go_pprof(args: &[&str], source: &str, fetched_to: &Path) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(source)
        .env("PPROF_TMPDIR", fetched_to)
        .output()
        .unwrap_or_else(|e| {
            panic!("`go tool pprof` could not be run ({e}): install Go (Debian package golang-go); this test does not pass without it")
        });
    assert!(
        output.status.success(),
        "go tool pprof {args:?} {source} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `go tool pprof ARGS PROFILE` with `cwd` as the current directory and `PPROF_BINARY_PATH`
/// an empty directory under it, so that no binary is at hand to symbolize with: what an
/// engineer's laptop sees of a profile copied out of a pod. Its standard output, or why it
/// failed (nothing panics: a caller collecting failures goes on).
pub fn try_go_pprof(args: &[&str], profile: &Path, cwd: &Path) -> Result<String, String> {
    let no_binaries = cwd.join("no-binaries");
    std::fs::create_dir_all(&no_binaries)
        .map_err(|e| format!("mkdir {}: {e}", no_binaries.display()))?;
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(profile)
        .current_dir(cwd)
        .env("PPROF_BINARY_PATH", &no_binaries)
        .env("PPROF_TMPDIR", cwd)
        .output()
        .map_err(|e| {
            format!("`go tool pprof` could not be run ({e}): install Go (Debian package golang-go)")
        })?;
    if !output.status.success() {
        return Err(format!(
            "go tool pprof {args:?} {} failed: {}",
            profile.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `go tool pprof -symbolize=none -top` as (function, flat) rows, on a copy of `profile` in a
/// directory of its own, with no binary anywhere pprof would look: what an engineer sees of a
/// dump copied off a dead pod (`kubectl cp`) onto a laptop without the program.
pub fn pprof_top_without_binary(profile: &Path, sample_index: &str) -> Vec<(String, i64)> {
    let scratch = std::env::temp_dir().join(format!(
        "heapwatch-pprof-copy-{}-{}",
        std::process::id(),
        profile
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("profile")
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let copy = scratch.join("copied.pb.gz");
    std::fs::copy(profile, &copy).expect("copy the profile");
    let index = format!("-sample_index={sample_index}");
    let text = try_go_pprof(
        &[
            "-symbolize=none",
            "-top",
            "-nodefraction=0",
            "-unit=B",
            &index,
        ],
        &copy,
        &scratch,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&scratch);
    top_rows(&text)
        .into_iter()
        .filter_map(|(flat, function)| Some((function, flat.trim_end_matches('B').parse().ok()?)))
        .collect()
}

/// The rows of a `go tool pprof -top` report, in its order, as (flat as printed, function).
pub fn top_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 5).then(|| (fields[0].to_owned(), fields[5..].join(" ")))
        })
        .collect()
}

/// Panics, naming the Debian package that provides it, when `tool` is not on the `PATH`: a
/// test that needs a real tool fails without it rather than skipping.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is missing: install the Debian package {package}; this test does not pass without it"
    );
}

/// A plain HTTP/1.1 GET with `Connection: close` on `addr`, every read and write under a
/// deadline; returns (status, body), the body decoded if it was sent chunked.
pub fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to {addr} for {path}: {e}"));
    let timeout = Some(std::time::Duration::from_secs(30));
    stream.set_read_timeout(timeout).expect("read timeout");
    stream.set_write_timeout(timeout).expect("write timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the response to GET {path}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header in the response to GET {path}"));
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in the response to GET {path}: {head}"));
    let body = &raw[split + 4..];
    if head.contains("\r\ntransfer-encoding: chunked") {
        (status, dechunk(body))
    } else {
        (status, body.to_vec())
    }
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .expect("a chunk size");
        let start = end + 2;
        if size == 0 || start + size > body.len() {
            break;
        }
        out.extend_from_slice(&body[start..start + size]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

/// The pixels of a headless-Chromium screenshot, as RGB triples.
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<[u8; 3]>,
}

/// Renders `url` in headless Chromium at `window` (`"W,H"`) into `dir/name`, decodes it and, when
/// `HEAPWATCH_SCREENSHOT_DIR` is set, copies it there (that is how the guide's pictures are made).
/// Panics, saying what to install, when Chromium is missing.
pub fn chromium_screenshot(url: &str, window: &str, dir: &Path, name: &str) -> Screenshot {
    let shot = dir.join(name);
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--window-size={window}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("chromium could not be run ({e}): install Debian package chromium; this test does not pass without it")
        });
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = std::fs::File::open(&shot).expect("open the screenshot");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut pixels).expect("a PNG frame");
    let channels = info.color_type.samples();
    let rgb = pixels[..info.buffer_size()]
        .chunks(channels)
        .map(|px| [px[0], px[1], px[2]])
        .collect();
    if let Ok(dest) = std::env::var("HEAPWATCH_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&dest).join(name)).expect("copy the screenshot");
    }
    Screenshot {
        width: info.width,
        height: info.height,
        rgb,
    }
}

/// `objcopy FLAGS INPUT OUTPUT` (Debian package binutils; a missing tool fails the test).
pub fn objcopy(flags: &[&str], input: &Path, output: &Path) {
    let result = Command::new("objcopy")
        .args(flags)
        .arg(input)
        .arg(output)
        .output()
        .expect("run objcopy (Debian package binutils)");
    assert!(
        result.status.success(),
        "objcopy {flags:?} {} failed: {}",
        input.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Waits up to `within` for the child `pid` to end: its exit status (128 + the signal if a signal
/// ended it), or `None` when it did not end in time; `on_hang` then runs (to say where the child
/// waits, say) before the child is killed and reaped.
pub fn wait_for_child(
    pid: libc::pid_t,
    within: std::time::Duration,
    on_hang: impl FnOnce(libc::pid_t),
) -> Option<i32> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let mut ready = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = within.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, borrowed for the call.
    let polled = unsafe { libc::poll(&mut ready, 1, millis) };
    // SAFETY: pidfd is ours and closed once.
    unsafe { libc::close(pidfd) };
    if polled != 1 {
        on_hang(pid);
        // SAFETY: signals our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaps our own child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    (polled == 1).then(|| {
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    })
}
