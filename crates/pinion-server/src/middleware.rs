//! What every request goes through: a request id, one log line, and the
//! guarantee that every error answer carries the contract's error body, even
//! those made by routing or by a layer rather than a handler.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::{ApiError, ContractBody};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn observe(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| is_safe_request_id(value))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    // The path only: query strings carry no secret here, but they are the
    // caller's data and the path is enough to find the request.
    let is_read = request.method() == axum::http::Method::GET;
    // Reads get a debug-level span: at the default level it costs nothing.
    let span = if is_read {
        tracing::debug_span!(
            "request",
            id = %id,
            method = %request.method(),
            path = %request.uri().path(),
            actor = tracing::field::Empty,
        )
    } else {
        tracing::info_span!(
            "request",
            id = %id,
            method = %request.method(),
            path = %request.uri().path(),
            actor = tracing::field::Empty,
        )
    };
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && response.extensions().get::<ContractBody>().is_none()
    {
        response = ApiError::from_status(status).into_response();
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Reads are the hot path: a line each would cost more than answering.
    // Writes and every error are logged at `info`.
    if is_read && status.as_u16() < 400 {
        span.in_scope(|| tracing::debug!(status = status.as_u16(), elapsed_ms, "answered"));
    } else {
        span.in_scope(|| tracing::info!(status = status.as_u16(), elapsed_ms, "answered"));
    }
    response
}

/// A caller-supplied id is kept only if it is short and plain, so it cannot
/// inject anything into logs.
fn is_safe_request_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A process-random prefix and a counter: unique, cheap (no system call
/// per request), and it sorts in arrival order within a process.
fn new_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        u32::from_le_bytes(bytes)
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:08x}-{count:x}")
}
