//! Accepting connections and speaking HTTP/1.1 on them.
//!
//! Pinion runs hyper's connection loop itself rather than `axum::serve`, for
//! what that loop does not offer:
//!
//! - half-closed connections are answered: a client that sends its request
//!   and then shuts its write side gets its answer, instead of having its
//!   request cancelled while (say) its promotion commits unseen;
//! - every request carries the peer's address ([`Peer`]), so authentication
//!   failures are counted and slowed per source;
//! - the answers hyper makes itself for requests it cannot parse (400, 414,
//!   431) carry the contract's error body, like every other error answer
//!   ([`ContractErrors`]).

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::Service;

use std::sync::Arc;

use crate::error::ApiError;
use crate::tls::Tls;

/// The address a request came from (the TCP peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write to a client may wait for room (the client not reading)
/// before the connection is closed: an event stream whose reader stopped
/// taking what was written is dropped after this (the contract's figure).
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// Serves `router` on every connection `listener` accepts until `shutdown`
/// completes, then stops accepting and lets requests in flight finish
/// (at most [`DRAIN_TIMEOUT`]). With `tls`, each connection first does a
/// TLS handshake with the newest certificate, then speaks HTTP/2 or
/// HTTP/1.1, as the client chose by ALPN.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a moment rather
                    // than spin, and keep serving the connections we have.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            router.clone().call(request.map(Body::new))
        });
        let watcher = graceful.watcher();
        let Some(tls) = &tls else {
            let io = ContractErrors::new(WriteStall::new(TokioIo::new(stream), WRITE_STALL));
            let connection = http1.serve_connection(io, service);
            tokio::spawn(async move {
                if let Err(err) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
            });
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (http1, http2) = (http1.clone(), http2.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = ContractErrors::new(WriteStall::new(TokioIo::new(stream), WRITE_STALL));
            let ended = if h2 {
                watcher.watch(http2.serve_connection(io, service)).await
            } else {
                watcher.watch(http1.serve_connection(io, service)).await
            };
            if let Err(err) = ended {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    Ok(())
}

/// A connection's IO that gives hyper's automatic error answers the
/// contract's body.
///
/// hyper answers a request it cannot parse by itself, before any service
/// sees it: `400`, `414` or `431` with `content-length: 0`, then it closes
/// the connection. Every answer Pinion makes itself with such a status has a
/// JSON body (the middleware sees to it), so a bodiless head with one of
/// those statuses can only be hyper's: it is replaced, on its way out, by
/// the same status with the contract's error body.
pub struct ContractErrors<T> {
    inner: T,
    /// A replacement answer and how much of it has been written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> ContractErrors<T> {
    pub fn new(inner: T) -> ContractErrors<T> {
        ContractErrors {
            inner,
            replacement: None,
        }
    }
}

impl<T: Write + Unpin> ContractErrors<T> {
    /// Writes what is left of a replacement answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written >= bytes.len() {
                self.replacement = None;
                break;
            }
            let wrote =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += wrote;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes over `head` if it is one of hyper's automatic error answers:
    /// the replacement is written instead, and hyper told all of `head` was.
    fn replace(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let replacement = automatic_error_answer(head)?;
        self.replacement = Some((replacement, 0));
        Some(match self.drain(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            // What is left goes out on flush or shutdown.
            _ => Poll::Ready(Ok(head.len())),
        })
    }
}

impl<T: Read + Unpin> Read for ContractErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for ContractErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(replaced) = self.replace(cx, buf) {
            return replaced;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        // An automatic answer is a head alone: one slice, or a head followed
        // by empty ones.
        if let Some(head) = bufs.first() {
            if bufs[1..].iter().all(|buf| buf.is_empty()) {
                if let Some(replaced) = self.replace(cx, head) {
                    return replaced;
                }
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection's IO whose writes fail once they have waited `limit` for
/// room without any progress: a client that stops reading is let go
/// rather than held, with its buffers and its event stream, for ever.
pub struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// Running while a write waits.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    pub fn new(inner: T, limit: Duration) -> WriteStall<T> {
        WriteStall {
            inner,
            limit,
            waiting: None,
        }
    }

    /// Passes a write's outcome through, timing how long it has waited.
    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let limit = self.limit;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if waiting.as_mut().poll(cx).is_ready() {
            self.waiting = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing written to it for the write-stall limit",
            )));
        }
        Poll::Pending
    }
}

impl<T: Read + Unpin> Read for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The contract's answer for `head` when `head` is one of hyper's bodiless
/// automatic error answers (400, 414, 431); `None` for anything else.
fn automatic_error_answer(head: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(head).ok()?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let status = match status {
        "400" => StatusCode::BAD_REQUEST,
        "414" => StatusCode::URI_TOO_LONG,
        "431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let fields = head.strip_suffix("\r\n\r\n")?;
    let bodiless = fields
        .split("\r\n")
        .skip(1)
        .any(|field| field.eq_ignore_ascii_case("content-length: 0"));
    if !bodiless || fields.contains("\r\n\r\n") {
        return None;
    }
    let body = ApiError::from_status(status).body_bytes();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    tracing::info!(
        status = status.as_u16(),
        "refused a request the HTTP layer could not parse"
    );
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_automatic_answers_are_replaced() {
        let automatic =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\n";
        let replaced = String::from_utf8(automatic_error_answer(automatic).unwrap()).unwrap();
        assert!(replaced.starts_with("HTTP/1.1 431 "), "{replaced}");
        let body = replaced.split_once("\r\n\r\n").unwrap().1;
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "headers_too_large");
        assert!(replaced.contains(&format!("content-length: {}\r\n", body.len())));

        for kept in [
            // Pinion's own 400s have a body.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n"[..],
            // Other statuses are never hyper's own.
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // A head with a body after it is not a head alone.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx",
            b"not http",
        ] {
            assert!(automatic_error_answer(kept).is_none(), "{kept:?}");
        }
    }
}
