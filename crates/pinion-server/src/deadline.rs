//! When a request must be answered by.
//!
//! Every request that waits on something (its body, the registry, the
//! database) has a deadline: `--request-timeout` from when its handler
//! starts, or sooner if the client says it will give up sooner
//! (`x-pinion-timeout: <milliseconds>`, sent by `pinion`), so the server
//! answers before its client stops listening. Handlers answer by their
//! deadline with what they know; a write in particular is never left queued
//! past it (see `state::Ticket`).

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use tokio::time::Instant;

use crate::error::{ApiError, Code};

/// The header in which a client says how long it will wait for the answer.
pub static CLIENT_TIMEOUT: HeaderName = HeaderName::from_static("x-pinion-timeout");

/// The longest a client may ask for: an hour.
const MAX_CLIENT_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// The deadline of a request: the server's own timeout, or the client's
    /// if that is shorter. A value of the header that is not a whole number
    /// of milliseconds from 1 to an hour is refused: an ambiguous deadline
    /// is not guessed at.
    pub fn for_request(
        headers: &HeaderMap,
        server_timeout: Duration,
    ) -> Result<Deadline, ApiError> {
        let Some(value) = headers.get(&CLIENT_TIMEOUT) else {
            return Ok(Deadline::after(server_timeout));
        };
        let mut values = headers.get_all(&CLIENT_TIMEOUT).iter();
        let client = value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|ms| (1..=MAX_CLIENT_TIMEOUT_MS).contains(ms))
            .filter(|_| values.nth(1).is_none())
            .map(Duration::from_millis)
            .ok_or_else(|| {
                ApiError::new(
                    Code::BadRequest,
                    format!(
                        "`{CLIENT_TIMEOUT}` must be given once, as a whole number of milliseconds from 1 to {MAX_CLIENT_TIMEOUT_MS}"
                    ),
                )
            })?;
        Ok(Deadline::after(server_timeout.min(client)))
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// When a queued write is given up on so that the deadline still holds
    /// if its commit turns out to be under way: a fifth of the span before
    /// the deadline, at most a second.
    pub fn give_up_at(&self) -> Instant {
        self.at - (self.timeout / 5).min(Duration::from_secs(1))
    }

    /// Runs `work`, or fails with `expired` once the deadline passes.
    pub async fn run<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
        expired: impl FnOnce() -> ApiError,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout_at(self.at, work).await {
            Ok(result) => result,
            Err(_) => Err(expired()),
        }
    }
}

/// What a read answers when the database did not answer by the deadline.
pub fn store_too_slow() -> ApiError {
    ApiError::new(
        Code::StoreUnavailable,
        "the store did not answer within the request's deadline",
    )
}
