//! The same pages as an axum `Router` (feature `axum`), for services that already run axum:
//! `app.nest_service("/heapwatch", heapwatch::http::router())`.

use super::pprof_pages::Answer;
use super::routes::{answer_under, Context};
use axum::body::Body;
use axum::extract::{NestedPath, Request};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A router serving every page of the built-in listener. The token (`HEAPWATCH_TOKEN`) is read
/// when it is built; the dump directory listed is the running watch's, looked up at each
/// request (`HEAPWATCH_DIR` or `./heapwatch-dumps` while no watch runs). Pages are rendered on
/// the calling task; each takes milliseconds (a snapshot and an encoding), except those that
/// wait `?seconds=N` (a CPU profile, a heap delta), which wait on tokio's blocking pool
/// (`spawn_blocking`), never on a runtime worker; one of each runs at a time, others get 409.
/// A client that goes away while its page waits (hyper drops the request's future) stops the
/// wait and frees its slot within 100 ms.
///
/// Mount it with `nest_service`, which routes both `/heapwatch` and `/heapwatch/` to the index
/// (axum's `nest` routes only `/heapwatch`: `/heapwatch/` never reaches the nested router, see
/// tokio-rs/axum#2659). Either way the index links its pages under the nesting prefix.
///
/// ```no_run
/// let app: axum::Router = axum::Router::new().nest_service("/heapwatch", heapwatch::http::router());
/// ```
pub fn router() -> axum::Router {
    let context = Arc::new(Context {
        token: std::env::var("HEAPWATCH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        dump_dir: None,
        metrics: super::metrics_page::render_metrics,
    });
    axum::Router::new().fallback(move |request: Request| {
        let context = Arc::clone(&context);
        async move {
            let (parts, _body) = request.into_parts();
            let authorization = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let base = link_base(parts.extensions.get::<NestedPath>());
            let target = parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path(), |target| target.as_str());
            let page = match answer_under(
                &context,
                &base,
                parts.method.as_str(),
                target,
                authorization,
            ) {
                Answer::Now(page) => page,
                Answer::Later(wait) => wait_off_the_runtime(wait).await,
            };
            let mut response = Response::builder()
                .status(
                    StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                )
                .header(header::CONTENT_TYPE, page.content_type)
                .header(header::CACHE_CONTROL, "no-store");
            if let Some(disposition) = page.disposition {
                response = response.header(header::CONTENT_DISPOSITION, disposition);
            }
            if let Some(seconds) = page.retry_after {
                response = response.header(header::RETRY_AFTER, seconds);
            }
            let body = if parts.method == Method::HEAD {
                Body::empty()
            } else {
                // The body keeps its share of the response budget until axum drops it (sent,
                // or the client gone).
                Body::from(axum::body::Bytes::from_owner(HeldBody {
                    body: page.body,
                    _held: page.held,
                }))
            };
            response
                .body(body)
                .unwrap_or_else(|_| Response::new(Body::from("internal error")))
        }
    })
}

/// A page's body with its share of the response budget.
struct HeldBody {
    body: Vec<u8>,
    _held: super::response::HeldBudget,
}

impl AsRef<[u8]> for HeldBody {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

/// Where the index's links start. Nested, axum strips the prefix, and `/heapwatch` and
/// `/heapwatch/` both arrive as `/`: a relative link cannot be right for both, so links start
/// with the prefix itself. Not nested (the router is the whole app), or nested at a path with
/// captures (`/{tenant}/heapwatch`, whose values are not known here): relative links, right
/// for an index requested with a trailing slash.
fn link_base(nested: Option<&NestedPath>) -> String {
    match nested.map(NestedPath::as_str) {
        Some(prefix) if !prefix.contains('{') => format!("{}/", prefix.trim_end_matches('/')),
        _ => String::new(),
    }
}

/// Waits on tokio's blocking pool, so the seconds a page waits hold no runtime worker; outside
/// a tokio runtime (another executor), on a thread of its own. The wait stops when its client
/// goes away: hyper then drops the request's future, and with it this one's [`SetOnDrop`],
/// which the waiting thread asks about.
async fn wait_off_the_runtime(wait: super::pprof_pages::Wait) -> super::response::Response {
    let failed = || super::response::Response::error(500);
    let gone = Arc::new(AtomicBool::new(false));
    let _on_drop = SetOnDrop(Arc::clone(&gone));
    let client_gone = move || gone.load(Ordering::Acquire);
    // `None` only once the flag is set, that is once this future is dropped: never seen here.
    let waited = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(move || wait.wait(&client_gone))
            .await
            .ok()
            .flatten(),
        Err(_) => {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("heapwatch-pprof-wait".to_owned())
                .spawn(move || {
                    let _ = sender.send(wait.wait(&client_gone));
                });
            match spawned {
                Ok(_) => receiver.await.ok().flatten(),
                Err(_) => None,
            }
        }
    };
    waited.unwrap_or_else(failed)
}

/// Sets its flag when dropped: a future dropped before it finished (the client went away)
/// tells the thread it handed work to.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}
