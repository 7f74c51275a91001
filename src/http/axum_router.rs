//! The same pages as an axum `Router` (feature `axum`), for services that already run axum:
//! `app.nest("/heapwatch", heapwatch::http::router())`.

use super::routes::{respond, Context};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use std::sync::Arc;

/// A router serving every page of the built-in listener. The token (`HEAPWATCH_TOKEN`) and
/// the dump directory (`HEAPWATCH_DIR`) are read when it is built. Pages are rendered on the
/// calling task; each takes milliseconds (a snapshot and an encoding).
///
/// ```no_run
/// let app: axum::Router = axum::Router::new().nest("/heapwatch", heapwatch::http::router());
/// ```
pub fn router() -> axum::Router {
    let context = Arc::new(Context {
        token: std::env::var("HEAPWATCH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        dump_dir: crate::watch::Watch::builder().resolved().dir,
        metrics: super::render_metrics,
    });
    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let context = Arc::clone(&context);
        async move {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let page = respond(&context, method.as_str(), uri.path(), authorization);
            let mut response = Response::builder()
                .status(
                    StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                )
                .header(header::CONTENT_TYPE, page.content_type)
                .header(header::CACHE_CONTROL, "no-store");
            if let Some(disposition) = page.disposition {
                response = response.header(header::CONTENT_DISPOSITION, disposition);
            }
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                Body::from(page.body)
            };
            response
                .body(body)
                .unwrap_or_else(|_| Response::new(Body::from("internal error")))
        }
    })
}
