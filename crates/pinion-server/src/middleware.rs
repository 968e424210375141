//! What every request goes through: a request id, one log line, and the
//! guarantee that every error answer carries the contract's error body, even
//! those made by routing or by a layer rather than a handler.

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
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        actor = tracing::field::Empty,
    );
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
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = format!("{elapsed_ms:.2}"),
            "answered"
        )
    });
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

fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return "unknown".to_owned();
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
