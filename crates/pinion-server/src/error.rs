//! The one error type of the HTTP layer. Domain and store errors convert into
//! it at the edge; it renders the contract's body
//! `{"error": {"code", "message"}}` and nothing else: no token, no stack.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pinion_api::{ErrorBody, ErrorDetail, Pin};
use pinion_core::ParseError;
use pinion_store::StoreError;

/// An error answer: status, stable code, one line for the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The current pin, sent along with a 409.
    pub pin: Option<Box<Pin>>,
}

/// Marks a response whose body is already a contract error, so the
/// normalising middleware leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContractBody;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        // One line, bounded: clients show it in CI logs as is.
        message.retain(|c| c != '\n' && c != '\r');
        if message.len() > 400 {
            let mut cut = 400;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ApiError {
            status,
            code,
            message,
            pin: None,
        }
    }

    /// Sends the current pin along (409 answers).
    pub fn with_pin(mut self, pin: Option<Pin>) -> Self {
        self.pin = pin.map(Box::new);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A field that failed validation: 422 with `invalid_<field>`.
    pub fn invalid(field: &'static str, err: &ParseError) -> Self {
        let code = match field {
            "template_name" => "invalid_template_name",
            "region" => "invalid_region",
            "image_digest" => "invalid_digest",
            "git_sha" => "invalid_git_sha",
            "notes" => "invalid_notes",
            "image" => "invalid_repository",
            "expected_digest" => "invalid_expected_digest",
            "to_digest" => "invalid_digest",
            "ci_run_url" => "invalid_ci_run_url",
            "repository" => "invalid_repository_label",
            "workflow" => "invalid_workflow",
            "build_sequence" => "invalid_build_sequence",
            _ => "invalid_request",
        };
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!("`{field}`: {}", err.reason()),
        )
    }

    /// What an error status that no handler produced becomes: a 405 from
    /// routing, a 408 from the timeout layer, and so on.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this endpoint does not take that method",
            ),
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "the request body must be JSON")
            }
            status if status.is_client_error() => ("bad_request", "the request is not valid"),
            _ => ("internal", "internal error; see the server log"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
            pin: self.pin.map(|pin| *pin),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ContractBody);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            err if err.is_unavailable() => {
                tracing::error!(error = %err, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; nothing was changed",
                )
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}
