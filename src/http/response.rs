//! A page's answer as plain data (status, content type, body), which the built-in listener and
//! the axum router each write out their own way.

use super::budget::Reservation;
use std::sync::Arc;

/// A response to send. Built by the pages only: its body may hold a share of the response
/// budget (see [`set_response_budget`](super::budget::set_response_budget)) until it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Content-Disposition` for downloads.
    pub disposition: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// `Retry-After`, in seconds: set on a 503 that a later try may not get (the response
    /// budget was spent, or every worker was busy).
    pub retry_after: Option<u32>,
    /// The body's share of the response budget, given back when the last holder drops it:
    /// the listener keeps it until the body is written, the axum router inside the body.
    pub(crate) held: HeldBudget,
}

/// A body's share of the response budget. Every two compare equal: it is bookkeeping, not
/// part of what is answered.
#[derive(Clone, Default)]
pub(crate) struct HeldBudget(Option<Arc<Reservation>>);

impl HeldBudget {
    /// Holds `reservation` for as long as this (or a clone) lives.
    pub(crate) fn new(reservation: Reservation) -> Self {
        HeldBudget(Some(Arc::new(reservation)))
    }
}

impl std::fmt::Debug for HeldBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "HeldBudget(held)"
        } else {
            "HeldBudget(none)"
        })
    }
}

impl PartialEq for HeldBudget {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeldBudget {}

impl Response {
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            disposition: None,
            body: body.into(),
            retry_after: None,
            held: HeldBudget::default(),
        }
    }

    /// `503 Service Unavailable` with `Retry-After`: the page's memory did not fit the
    /// response budget (see [`set_response_budget`](super::budget::set_response_budget)).
    pub(crate) fn over_budget() -> Self {
        let mut response = Response::text(
            503,
            "the memory this page needs is not available now (heapwatch's response budget is spent); retry later",
        );
        response.retry_after = Some(super::budget::RETRY_AFTER_SECONDS);
        response
    }

    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub(crate) fn error(status: u16) -> Self {
        Response::text(status, reason_phrase(status))
    }
}

/// The standard phrase of the statuses the server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
