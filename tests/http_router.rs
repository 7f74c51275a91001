//! The pages inside a service's own axum app, served by tokio on loopback: nested under a
//! prefix, the index answers and every link on it resolves under that prefix (not to the
//! service's own pages); the built-in listener at the root keeps working; and both list the
//! dumps of the running watch, whatever directory it was built with. Feature `axum`.
//!
//! Frame-pointer pass: not needed — page routing inside axum; what the profile holds does not matter.
#![cfg(feature = "axum")]

mod common;
#[path = "common/served_axum.rs"]
mod served_axum;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapwatch::Alloc<std::alloc::System> = heapwatch::Alloc::new(std::alloc::System);

/// What the service answers on its own `/metrics`: a link that lands there went astray.
const SERVICE_METRICS: &str = "the service's own metrics";

fn serve(app: axum::Router) -> served_axum::Served {
    served_axum::serve(app, 1)
}

/// A service's app with its own pages and heapwatch's nested twice: with `nest` at
/// `/heapwatch` and with `nest_service` at `/hw`.
fn service_app() -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { SERVICE_METRICS }))
        .route("/", axum::routing::get(|| async { "the service" }))
        .nest("/heapwatch", heapwatch::http::router())
        .nest_service("/hw", heapwatch::http::router())
}

/// A plain HTTP/1.1 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    common::http_get(&addr.to_string(), path)
}

/// The `href`s of a page.
fn links(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// Resolves `href` against the path of the page it is on, as a browser does (no `..` here).
fn resolve(page: &str, href: &str) -> String {
    assert!(!href.contains("..") && !href.contains("://"), "{href}");
    if href.starts_with('/') {
        href.to_owned()
    } else {
        let dir = &page[..=page.rfind('/').unwrap()];
        format!("{dir}{href}")
    }
}

/// Fetches the index at `index`, follows each of its links, and checks each lands on one of
/// heapwatch's pages under `prefix`. Returns the paths fetched.
fn follow_every_link(addr: SocketAddr, index: &str, prefix: &str) -> Vec<String> {
    let (status, body) = get(addr, index);
    assert_eq!(status, 200, "GET {index}");
    let html = String::from_utf8(body).expect("utf-8 index");
    assert!(html.contains("<h1>heapwatch</h1>"), "GET {index}: {html}");
    let hrefs = links(&html);
    assert!(hrefs.len() >= 7, "the index links every page: {hrefs:?}");
    let mut fetched = Vec::new();
    for href in hrefs {
        let path = resolve(index, &href);
        assert!(
            path.starts_with(prefix),
            "on {index}, {href} resolves to {path}, outside {prefix}"
        );
        let (status, body) = get(addr, &path);
        assert_eq!(status, 200, "GET {path} (linked from {index} as {href})");
        assert_ne!(body, SERVICE_METRICS.as_bytes(), "{path}");
        if path.ends_with("/metrics") {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("heapwatch_heap_live_bytes"), "{path}: {text}");
        }
        fetched.push(path);
    }
    fetched
}

#[test]
fn nested_index_links_resolve_under_the_prefix() {
    let service = serve(service_app());
    // `nest`: axum routes `/heapwatch` (not `/heapwatch/`, tokio-rs/axum#2659) to the index.
    let fetched = follow_every_link(service.addr, "/heapwatch", "/heapwatch/");
    assert!(fetched.contains(&"/heapwatch/debug/heap/report".to_owned()));
    assert!(fetched.contains(&"/heapwatch/metrics".to_owned()));
    // `nest_service`: both forms reach the index, and its links are right from either.
    for index in ["/hw", "/hw/"] {
        follow_every_link(service.addr, index, "/hw/");
    }
    // The service's own pages are untouched.
    assert_eq!(
        get(service.addr, "/metrics"),
        (200, SERVICE_METRICS.as_bytes().to_vec())
    );

    // Not nested: the router as the whole app, and the built-in listener, at the root.
    let whole = serve(heapwatch::http::router());
    follow_every_link(whole.addr, "/", "/");
    let listener = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("bind");
    let fetched = follow_every_link(listener.local_addr(), "/", "/");
    assert!(fetched.contains(&"/debug/pprof/heap".to_owned()));
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "heapwatch-http-router-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Waits (polling, bounded) until the watch has written a dump set into `dir`; its stem.
fn wait_for_dump(dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(set) = heapwatch::watch::list_sets(dir).pop() {
            return set.stem;
        }
        assert!(
            Instant::now() < deadline,
            "no dump set in {} after 60 s",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_pages_list_the_running_watchs_dumps() {
    let dir = scratch_dir("dumps");
    // Built before the watch starts, neither given a directory.
    let service = serve(service_app());
    let listener = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .start()
        .expect("bind");

    let watch = heapwatch::watch::Watch::builder()
        .dir(&dir)
        .start()
        .expect("the only watch in this process");
    assert_eq!(
        heapwatch::published::running_dump_dir().as_deref(),
        Some(dir.as_path()),
        "the watch publishes its directory (is HEAPWATCH_DIR set?)"
    );
    watch.dump_now();
    let stem = wait_for_dump(&dir);
    let summary = format!("{stem}.json");

    for (addr, prefix) in [
        (service.addr, "/heapwatch"),
        (service.addr, "/hw"),
        (listener.local_addr(), ""),
    ] {
        let (status, body) = get(addr, &format!("{prefix}/debug/heap/dumps"));
        assert_eq!(status, 200);
        let listing: serde_json::Value = serde_json::from_slice(&body).expect("JSON listing");
        let sets = listing["dump_sets"].as_array().expect("dump_sets");
        assert!(
            sets.iter().any(|s| s["stem"] == stem.as_str()
                && s["files"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|n| n == summary.as_str()))),
            "{prefix}/debug/heap/dumps lists {stem}: {listing}"
        );
        let (status, body) = get(addr, &format!("{prefix}/debug/heap/dumps/{summary}"));
        assert_eq!(status, 200, "{prefix}/debug/heap/dumps/{summary}");
        assert_eq!(body, std::fs::read(dir.join(&summary)).unwrap());
    }

    // An explicit directory still wins over the watch's.
    let elsewhere = scratch_dir("elsewhere");
    let explicit = heapwatch::http::Server::builder()
        .addr("127.0.0.1:0")
        .dump_dir(&elsewhere)
        .start()
        .expect("bind");
    let (status, body) = get(explicit.local_addr(), "/debug/heap/dumps");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains(&stem));

    drop(watch);
    assert_eq!(
        heapwatch::published::running_dump_dir(),
        None,
        "withdrawn at stop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
