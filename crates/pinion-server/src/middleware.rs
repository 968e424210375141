//! What every request goes through: a request id, one log line, and the
//! guarantee that every error answer carries the contract's error body, even
//! those made by routing or by a layer rather than a handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Span;

use std::sync::Arc;

use crate::error::{ApiError, ContractBody, LogDetail};
use crate::http_metrics::HttpMetrics;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether reads get an `info` span and line like writes (JSON logs, where
/// every line written while serving a request must carry its fields);
/// otherwise reads, the hot path, log at `debug`.
static EVERY_REQUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs every request at `info`, reads included (see [`EVERY_REQUEST`]).
pub fn log_every_request() {
    EVERY_REQUEST.store(true, Ordering::Relaxed);
}

/// The layer in front of every route. A plain [`Service`] with its own
/// future rather than `axum::middleware::from_fn`: this runs on every read,
/// and `from_fn` boxes two futures and clones the router per request.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<HttpMetrics>,
}

impl ObserveLayer {
    /// Counts every answer in `metrics`.
    pub fn new(metrics: Arc<HttpMetrics>) -> ObserveLayer {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let id = request
            .headers()
            .get(&REQUEST_ID)
            .filter(|value| is_safe_request_id(value.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        let is_read = request.method() == Method::GET && !EVERY_REQUEST.load(Ordering::Relaxed);
        // The route as registered (`/cp/admin/tokens/{name}`): the layer
        // wraps each route, so the router has named it already.
        let matched = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .cloned();
        let route = matched
            .as_ref()
            .map_or("unmatched", axum::extract::MatchedPath::as_str);
        // The route, not the query string: query strings carry no secret
        // here, but they are the caller's data. Reads get a debug-level span
        // (unless every request is logged): at the default level it costs
        // nothing.
        let id_text = id.to_str().unwrap_or_default();
        let span = if is_read {
            tracing::debug_span!(
                "request",
                request_id = id_text,
                method = %request.method(),
                route = %route,
                actor = tracing::field::Empty,
                status = tracing::field::Empty,
                elapsed_ms = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "request",
                request_id = id_text,
                method = %request.method(),
                route = %route,
                actor = tracing::field::Empty,
                status = tracing::field::Empty,
                elapsed_ms = tracing::field::Empty,
            )
        };
        let method = request.method().clone();
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Observed {
            inner,
            id: Some(id),
            span,
            is_read,
            started: Instant::now(),
            route: matched,
            method,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The routed request's future, inside its span; on completion it adds
    /// the request id, normalises error bodies and logs one line.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
        span: Span,
        is_read: bool,
        started: Instant,
        route: Option<axum::extract::MatchedPath>,
        method: Method,
        metrics: Arc<HttpMetrics>,
    }
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        // A handler that panics answers 500 with the contract's body (its
        // detail logged with the request id below), instead of the
        // connection dropping without an answer.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            this.inner.as_mut().poll(cx)
        }));
        let mut response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => response,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                ApiError::internal(format!("the handler panicked: {what}")).into_response()
            }
        };
        let status = response.status();
        if (status.is_client_error() || status.is_server_error())
            && response.extensions().get::<ContractBody>().is_none()
        {
            response = ApiError::from_status(status).into_response();
        }
        // A server failure's detail is for the log only, logged here where
        // the request id is known even when the (debug) read span is off.
        if let Some(LogDetail(detail)) = response.extensions_mut().remove::<LogDetail>() {
            let request_id = this
                .id
                .as_ref()
                .and_then(|id| id.to_str().ok())
                .unwrap_or_default();
            tracing::error!(request_id, status = status.as_u16(), %detail, "request failed");
        }
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID.clone(), id);
        }
        // Milliseconds to the microsecond: `0.033`, not `0.033142000000000005`.
        let elapsed = this.started.elapsed().as_secs_f64();
        this.metrics.observe(
            this.route
                .as_ref()
                .map_or("unmatched", axum::extract::MatchedPath::as_str),
            this.method,
            status.as_u16(),
            elapsed,
        );
        let elapsed_ms = (elapsed * 1_000_000.0).round() / 1000.0;
        this.span.record("status", status.as_u16());
        this.span.record("elapsed_ms", elapsed_ms);
        // Reads are the hot path: a line each would cost more than answering.
        // Writes and every error are logged at `info`.
        if *this.is_read && status.as_u16() < 400 {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "answered");
        } else {
            tracing::info!(status = status.as_u16(), elapsed_ms, "answered");
        }
        Poll::Ready(Ok(response))
    }
}

/// A caller-supplied id is kept only if it is short and plain, so it cannot
/// inject anything into logs.
fn is_safe_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A process-random prefix and a counter: unique, cheap (no system call
/// per request), and it sorts in arrival order within a process.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        u32::from_le_bytes(bytes)
    });
    request_id(prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `{prefix:08x}-{count:x}`, written without the formatting machinery.
fn request_id(prefix: u32, count: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 8 + 1 + 16];
    for (i, slot) in text[..8].iter_mut().enumerate() {
        *slot = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
    }
    text[8] = b'-';
    let digits = (16 - count.leading_zeros() as usize / 4).max(1);
    for (i, slot) in text[9..9 + digits].iter_mut().enumerate() {
        *slot = HEX[((count >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text[..9 + digits]).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_the_count_in_hex() {
        for (prefix, count) in [
            (0, 0),
            (0xdead_beef, 1),
            (0x0000_00ff, 0x10),
            (u32::MAX, 0xfff),
            (0x1234_5678, u64::MAX),
        ] {
            assert_eq!(
                request_id(prefix, count).to_str().ok(),
                Some(format!("{prefix:08x}-{count:x}").as_str())
            );
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_contract_body() {
        use tower::ServiceExt;
        let metrics = Arc::new(HttpMetrics::default());
        let router = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if true {
                        panic!("on purpose");
                    }
                    "never"
                }),
            )
            .layer(ObserveLayer::new(metrics.clone()));
        let request = axum::http::Request::get("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert!(
            !body.to_string().contains("on purpose"),
            "the detail is for the log only"
        );
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains(r#"route="/boom",method="GET",status="500"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        assert!(is_safe_request_id(b"abc-123_x.y"));
        assert!(!is_safe_request_id(b""));
        assert!(!is_safe_request_id(&[b'a'; 65]));
        assert!(!is_safe_request_id(b"a b"));
        assert!(!is_safe_request_id(b"a\nb"));
    }
}
