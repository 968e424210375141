//! Reading a request's body: bounded in size, under the request's
//! deadline, every failure named for what it is. The API's JSON bodies and
//! the page's forms are read here alike.

use axum::body::{Body, Bytes};

use crate::deadline::Deadline;
use crate::error::{ApiError, Code};

/// The body's bytes: `413 payload_too_large` past `limit`, `400
/// malformed_body` when it ends early or its framing is broken, `408
/// request_timeout` when it does not arrive by the deadline.
pub(crate) async fn read(body: Body, limit: usize, deadline: &Deadline) -> Result<Bytes, ApiError> {
    let read = async {
        axum::body::to_bytes(body, limit).await.map_err(|err| {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new(
                    Code::PayloadTooLarge,
                    format!("the request body is larger than {limit} bytes"),
                )
            } else {
                ApiError::new(
                    Code::MalformedBody,
                    format!("the request body could not be read: {err}"),
                )
            }
        })
    };
    deadline
        .run(read, || {
            ApiError::new(
                Code::RequestTimeout,
                "the request body did not arrive within the request's deadline",
            )
        })
        .await
}
