//! The pages, independent of any server: a request's method, path, query and token in, a
//! status, content type and body out. The built-in listener and the axum router both call
//! [`respond`].

use super::heavy_pages;
use super::pprof_pages::{self, Answer};
pub use super::response::{reason_phrase, Response};
use crate::profile::SampleType;
use crate::watch::list_sets;
use std::path::Path;
use std::sync::OnceLock;

/// What the pages need to know about their surroundings.
#[derive(Debug, Clone)]
pub struct Context {
    /// The bearer token required, if any.
    pub token: Option<String>,
    /// The dump directory listed under `/debug/heap/dumps`; `None`: the running watch's, read
    /// at each request (see [`crate::watch::dump_dir`]), so pages built before the watch starts
    /// still list what it writes.
    pub dump_dir: Option<std::path::PathBuf>,
    /// Renders `/metrics`.
    pub metrics: fn() -> String,
}

/// Answers one request. `authorization` is the `Authorization` header's value, if any. The
/// index links the other pages relatively, as a page served at the server's root must.
pub fn respond(
    context: &Context,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Response {
    respond_under(context, "", method, path, authorization)
}

/// [`respond`] for pages mounted under a prefix (`path` is then the part after it): the index's
/// links start with `link_base`, e.g. `/heapwatch/` for pages nested at `/heapwatch`, where a
/// relative link would resolve against the service's root when the index is requested as
/// `/heapwatch`. `""` keeps the links relative.
pub fn respond_under(
    context: &Context,
    link_base: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Response {
    answer_under(context, link_base, method, path, authorization).into_response()
}

/// [`respond_under`], with the pages that wait seconds (`?seconds=N`) left to wait: the axum
/// router waits on a blocking thread, not on the task. `target` is the path with its query.
pub(crate) fn answer_under(
    context: &Context,
    link_base: &str,
    method: &str,
    target: &str,
    authorization: Option<&str>,
) -> Answer {
    if method != "GET" && method != "HEAD" {
        return Answer::Now(Response::error(405));
    }
    if let Some(token) = &context.token {
        let given = authorization.and_then(bearer_credentials);
        if !given.is_some_and(|given| token_matches(given, token)) {
            return Answer::Now(Response::error(401));
        }
    }
    let target = target.split('#').next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Answer::Now(match path {
        "/" => {
            heavy_pages::light(|| Response::new(200, "text/html; charset=utf-8", index(link_base)))
        }
        "/metrics" => heavy_pages::light(|| {
            Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                (context.metrics)(),
            )
        }),
        "/debug/pprof/heap" => return pprof_pages::heap(query, SampleType::InuseSpace, "heap"),
        "/debug/pprof/allocs" => return pprof_pages::heap(query, SampleType::AllocSpace, "allocs"),
        "/debug/pprof/profile" => return pprof_pages::cpu(query),
        "/debug/heap/flamegraph.svg" => {
            heavy_pages::flamegraph(query.split('&').any(|pair| pair == "by=span"))
        }
        "/debug/heap/diff.svg" => heavy_pages::diff_flamegraph(),
        "/debug/heap/report" => heavy_pages::report(),
        "/debug/heap/dumps" | "/debug/heap/dumps/" => heavy_pages::light(|| {
            Response::new(200, "application/json", dump_listing(&dump_dir(context)))
        }),
        _ => match path.strip_prefix("/debug/heap/dumps/") {
            Some(name) => dump_file(&dump_dir(context), name),
            None => Response::error(404),
        },
    })
}

/// The context's directory, else the running watch's, else the default a watch would use.
fn dump_dir(context: &Context) -> std::path::PathBuf {
    context
        .dump_dir
        .clone()
        .unwrap_or_else(crate::watch::dump_dir)
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is matched in any
/// case, as RFC 9110 §11.1 has it (`bearer`, `BEARER`).
fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credentials.trim())
}

/// Whether `given` is `token`, in a time that does not tell a client how close it came.
/// Both are hashed under a key drawn at random for this process (std's SipHash) and the
/// fixed-size digests compared: how long that takes depends on the length of `given` (the
/// client's own) and of the token (the same for every request), not on where the two first
/// differ or whether their lengths agree. Equal digests are confirmed byte for byte, so a
/// collision of the 64-bit digests cannot let a wrong token in; that comparison runs only
/// when the digests already match. A keyed std hash rather than SHA-256: the key keeps the
/// digests unpredictable, and no dependency is added.
fn token_matches(given: &str, token: &str) -> bool {
    use std::hash::{BuildHasher, RandomState};
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let key = KEY.get_or_init(RandomState::new);
    let digests_differ = key.hash_one(given.as_bytes()) ^ key.hash_one(token.as_bytes());
    digests_differ == 0 && given == token
}

/// Every file of every complete dump set, by name: only files that would be served (regular,
/// this process's user's, one link — see [`read_served_file`](crate::watch::read_served_file)),
/// so a symlink or hard link planted under a set's name is neither listed nor served.
fn dump_files(dir: &Path) -> Vec<(String, &'static str)> {
    let mut files = Vec::new();
    for set in list_sets(dir) {
        let mut add = |path: std::path::PathBuf, kind: &'static str| {
            if crate::watch::is_served(&path) {
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    files.push((name.to_owned(), kind));
                }
            }
        };
        add(set.profile(), "application/octet-stream");
        add(set.flamegraph(), "image/svg+xml");
        add(set.diff_flamegraph(), "image/svg+xml");
        add(set.summary(), "application/json");
    }
    files
}

fn dump_listing(dir: &Path) -> Vec<u8> {
    // Listed once, not once per set: a directory of many sets is read in linear time.
    let served: Vec<String> = dump_files(dir).into_iter().map(|(name, _)| name).collect();
    let sets: Vec<serde_json::Value> = list_sets(dir)
        .iter()
        .map(|set| {
            let summary = crate::watch::read_summary(set).ok();
            let files: Vec<&String> = served
                .iter()
                .filter(|name| name.starts_with(&set.stem))
                .collect();
            serde_json::json!({
                "stem": set.stem,
                "reason": summary.as_ref().map(|s| s.reason.clone()),
                "time": summary.as_ref().map(|s| s.time.clone()),
                "files": files,
            })
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({ "dump_sets": sets })).unwrap_or_default()
}

/// Serves a dump file only if `name` is exactly one of the listed names (nothing from the
/// request is ever joined to a path), and only if it is still a regular file of this process's
/// user with one link when opened (no symlink followed: see
/// [`read_served_file`](crate::watch::read_served_file)); anything else is 404.
fn dump_file(dir: &Path, name: &str) -> Response {
    let Some((listed, content_type)) = dump_files(dir).into_iter().find(|(n, _)| n == name) else {
        return Response::error(404);
    };
    let path = dir.join(&listed);
    // The size as listed: a file that grows after this is read whole, as before (dump files
    // are written once, under a temporary name, and renamed).
    let size_bytes = std::fs::symlink_metadata(&path).map_or(0, |meta| meta.len());
    heavy_pages::download(size_bytes, || match crate::watch::read_served_file(&path) {
        Ok(body) => {
            let mut response = Response::new(200, content_type, body);
            response.disposition = Some(format!("attachment; filename=\"{listed}\""));
            response
        }
        Err(_) => Response::error(404),
    })
}

/// The index page, its links starting with `link_base` (escaped for the attribute).
fn index(link_base: &str) -> String {
    let mut base = String::with_capacity(link_base.len());
    for c in link_base.chars() {
        match c {
            '&' => base.push_str("&amp;"),
            '"' => base.push_str("&quot;"),
            '<' => base.push_str("&lt;"),
            '>' => base.push_str("&gt;"),
            c => base.push(c),
        }
    }
    // The paths as shown in text: from the server's root.
    let root = if base.starts_with('/') {
        base.clone()
    } else {
        format!("/{base}")
    };
    INDEX.replace("{base}", &base).replace("{root}", &root)
}

/// Every link starts with `{base}`: nothing (relative to the page at the server's root) or the
/// nesting prefix; `{root}` is the same as a path from the server's root, for text.
const INDEX: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>heapwatch</title>
<style>body{font-family:sans-serif;margin:2em;max-width:50em}li{margin:.4em 0}code{background:#eee;padding:0 .3em}</style>
</head><body>
<h1>heapwatch</h1>
<ul>
<li><a href="{base}debug/heap/flamegraph.svg">Live heap flamegraph</a>, or <a href="{base}debug/heap/flamegraph.svg?by=span">rooted at each tracing span</a></li>
<li><a href="{base}debug/heap/diff.svg">Differential flamegraph: now against the baseline</a></li>
<li><a href="{base}debug/heap/report">Report</a> (JSON: counters, cgroup, verdict, suspects)</li>
<li><a href="{base}debug/heap/dumps">Dump sets on disk</a> (each file downloadable by its listed name)</li>
<li><a href="{base}debug/pprof/heap">{root}debug/pprof/heap</a> and <a href="{base}debug/pprof/allocs">{root}debug/pprof/allocs</a>: <code>go tool pprof http://HOST{root}debug/pprof/heap</code>; <code>?seconds=N</code>: what was allocated over the next N seconds (N up to 120, one at a time); <a href="{base}debug/pprof/heap?debug=1">?debug=1</a>: Go's legacy text format</li>
<li>{root}debug/pprof/profile?seconds=N: a CPU profile of N seconds (default 30, up to 120, one at a time; feature <code>cpu</code>): <code>go tool pprof http://HOST{root}debug/pprof/profile?seconds=10</code></li>
<li><a href="{base}metrics">{root}metrics</a> (Prometheus)</li>
</ul>
</body></html>
"#;
