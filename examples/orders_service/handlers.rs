//! The service's request handlers.

use axum::extract::{Path, State};
use std::sync::{Arc, Mutex};

/// What the handlers share.
#[derive(Default)]
pub struct AppState {
    /// Session blobs by order: the service's leak, since nothing ever evicts them.
    sessions: Mutex<Vec<(u64, Vec<u8>)>>,
}

/// `GET /orders/{id}`: answers, and remembers the order's session data for good.
pub async fn get_order(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> String {
    let kept = retain_session_blob(&state, [id]);
    format!("order {id}: {kept} sessions remembered\n")
}

/// The most orders one bulk import remembers.
const MAX_BULK: u64 = 1024;

/// `GET /orders/bulk/{count}`: a bulk import of `count` orders (at most 1024); answers like
/// [`get_order`], and remembers every order's session data for good.
pub async fn get_orders_bulk(State(state): State<Arc<AppState>>, Path(count): Path<u64>) -> String {
    let count = count.min(MAX_BULK);
    let kept = retain_session_blob(&state, 1..=count);
    format!("orders 1..={count}: {kept} sessions remembered\n")
}

/// Remembers 64 KiB of session data for each of `orders`; returns how many blobs are
/// remembered. Generic over where the orders come from, so each handler has a copy of its own
/// that is called once, and inlined there like the small helper it is.
fn retain_session_blob(state: &AppState, orders: impl IntoIterator<Item = u64>) -> usize {
    let mut kept = 0;
    for order in orders {
        let blob = vec![order as u8; 64 * 1024];
        let mut sessions = state.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.push((order, blob));
        kept = sessions.len();
    }
    kept
}

/// `GET /report`: an 8 MiB report, rendered, sent and dropped.
pub async fn get_report() -> String {
    super::report::render_report(8 << 20)
}

/// `GET /health`.
pub async fn health() -> &'static str {
    "ok\n"
}
