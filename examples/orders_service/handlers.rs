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
    let kept = retain_session_blob(&state, id);
    format!("order {id}: {kept} sessions remembered\n")
}

/// Remembers 64 KiB of session data for `order`; returns how many blobs are remembered.
fn retain_session_blob(state: &AppState, order: u64) -> usize {
    let blob = vec![order as u8; 64 * 1024];
    let mut sessions = state.sessions.lock().unwrap_or_else(|e| e.into_inner());
    sessions.push((order, blob));
    sessions.len()
}

/// `GET /report`: an 8 MiB report, rendered, sent and dropped.
pub async fn get_report() -> String {
    super::report::render_report(8 << 20)
}

/// `GET /health`.
pub async fn health() -> &'static str {
    "ok\n"
}
