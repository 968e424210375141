//! The one error type of the HTTP layer. Domain and store errors convert into
//! it at the edge; it renders the contract's body
//! `{"error": {"code", "message"}}` and nothing else: no token, no stack.
//!
//! Every stable code, and the status it is answered with, is declared once,
//! in [`Code`]; `docs/api.md` lists the same set (a test checks both ways).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pinion_api::{ErrorBody, ErrorDetail, Pin};
use pinion_core::ParseError;
use pinion_store::StoreError;

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $status:ident;)*) => {
        /// A stable error code of the contract, with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, for the documentation check.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable snake_case code clients match on.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            /// The status every answer with this code has.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

codes! {
    /// The body is not JSON.
    MalformedJson = "malformed_json", BAD_REQUEST;
    /// `If-Match` is not a quoted revision.
    InvalidIfMatch = "invalid_if_match", BAD_REQUEST;
    /// The HTTP layer refused the request for another reason.
    BadRequest = "bad_request", BAD_REQUEST;
    /// A request body that ended early or whose chunked encoding is broken.
    MalformedBody = "malformed_body", BAD_REQUEST;
    /// More than one `Authorization` header: which one counts is ambiguous.
    AmbiguousAuthorization = "ambiguous_authorization", BAD_REQUEST;
    Unauthorized = "unauthorized", UNAUTHORIZED;
    Forbidden = "forbidden", FORBIDDEN;
    RuntimePinMissing = "runtime_pin_missing", NOT_FOUND;
    WebhookNotFound = "webhook_not_found", NOT_FOUND;
    InstanceNotFound = "instance_not_found", NOT_FOUND;
    /// A release of a pin that is not held.
    HoldNotFound = "hold_not_found", NOT_FOUND;
    /// An abort of a canary the pin does not have.
    CanaryNotFound = "canary_not_found", NOT_FOUND;
    /// No active token of that name (or not one this token may revoke).
    TokenNotFound = "token_not_found", NOT_FOUND;
    /// No delivery of that event to that webhook.
    DeliveryNotFound = "delivery_not_found", NOT_FOUND;
    NotFound = "not_found", NOT_FOUND;
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    RequestTimeout = "request_timeout", REQUEST_TIMEOUT;
    /// Authentication failed too often from this source; `Retry-After` says when to try again.
    TooManyAuthFailures = "too_many_auth_failures", TOO_MANY_REQUESTS;
    PinConflict = "pin_conflict", CONFLICT;
    StaleBuild = "stale_build", CONFLICT;
    NothingToRollBack = "nothing_to_roll_back", CONFLICT;
    /// An active token has that name already.
    TokenNameTaken = "token_name_taken", CONFLICT;
    /// The pin is held: promotions are refused until it is released (an
    /// `admin` token with `force` overrides).
    PinHeld = "pin_held", LOCKED;
    /// A receiver's `410` disabled the webhook; PUT it again to enable it.
    WebhookDisabled = "webhook_disabled", CONFLICT;
    /// Events after `after` have been pruned: reading on would skip some.
    EventsExpired = "events_expired", GONE;
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE;
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// The request target (path and query) is longer than the HTTP layer takes.
    UriTooLong = "uri_too_long", URI_TOO_LONG;
    /// Too many request headers, or too large.
    HeadersTooLarge = "headers_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE;
    /// JSON of the wrong shape, or a query parameter out of range.
    InvalidRequest = "invalid_request", UNPROCESSABLE_ENTITY;
    InvalidTemplateName = "invalid_template_name", UNPROCESSABLE_ENTITY;
    InvalidRegion = "invalid_region", UNPROCESSABLE_ENTITY;
    InvalidDigest = "invalid_digest", UNPROCESSABLE_ENTITY;
    InvalidGitSha = "invalid_git_sha", UNPROCESSABLE_ENTITY;
    InvalidNotes = "invalid_notes", UNPROCESSABLE_ENTITY;
    InvalidRepository = "invalid_repository", UNPROCESSABLE_ENTITY;
    InvalidExpectedDigest = "invalid_expected_digest", UNPROCESSABLE_ENTITY;
    InvalidBuildSequence = "invalid_build_sequence", UNPROCESSABLE_ENTITY;
    InvalidCiRunUrl = "invalid_ci_run_url", UNPROCESSABLE_ENTITY;
    InvalidRepositoryLabel = "invalid_repository_label", UNPROCESSABLE_ENTITY;
    InvalidWorkflow = "invalid_workflow", UNPROCESSABLE_ENTITY;
    /// `after` or `Last-Event-ID` is not an event id, or beyond the newest.
    InvalidAfter = "invalid_after", UNPROCESSABLE_ENTITY;
    InvalidEventType = "invalid_event_type", UNPROCESSABLE_ENTITY;
    InvalidWebhookName = "invalid_webhook_name", UNPROCESSABLE_ENTITY;
    InvalidWebhookUrl = "invalid_webhook_url", UNPROCESSABLE_ENTITY;
    InvalidInstanceId = "invalid_instance_id", UNPROCESSABLE_ENTITY;
    InvalidTtlSeconds = "invalid_ttl_seconds", UNPROCESSABLE_ENTITY;
    /// The digest has not soaked long enough on the soak source.
    SoakRequired = "soak_required", UNPROCESSABLE_ENTITY;
    /// A hold's reason: empty, over 500 bytes, or with control characters.
    InvalidReason = "invalid_reason", UNPROCESSABLE_ENTITY;
    /// A canary's percentage is not a whole number from 1 to 99.
    InvalidPercent = "invalid_percent", UNPROCESSABLE_ENTITY;
    /// A canary of the pin's own digest.
    CanaryIsStable = "canary_is_stable", UNPROCESSABLE_ENTITY;
    InvalidTokenName = "invalid_token_name", UNPROCESSABLE_ENTITY;
    InvalidScope = "invalid_scope", UNPROCESSABLE_ENTITY;
    /// A token's `expires_at` is not an RFC 3339 time in the future.
    InvalidExpiresAt = "invalid_expires_at", UNPROCESSABLE_ENTITY;
    UnknownTemplate = "unknown_template", UNPROCESSABLE_ENTITY;
    /// A region not in the server's `--regions` list.
    UnknownRegion = "unknown_region", UNPROCESSABLE_ENTITY;
    /// The fleet holds as many instances as it may (in total, or for this
    /// token): a report of new instances is refused whole.
    FleetFull = "fleet_full", TOO_MANY_REQUESTS;
    /// This token has as many event streams open as it may.
    TooManyStreams = "too_many_streams", TOO_MANY_REQUESTS;
    /// The request body is JSON, but not an object.
    BodyNotObject = "body_not_object", BAD_REQUEST;
    TemplateNotPinnable = "template_not_pinnable", UNPROCESSABLE_ENTITY;
    ProvenanceRequired = "provenance_required", UNPROCESSABLE_ENTITY;
    DigestNotInHistory = "digest_not_in_history", UNPROCESSABLE_ENTITY;
    DigestNotInRegistry = "digest_not_in_registry", UNPROCESSABLE_ENTITY;
    NoRepository = "no_repository", UNPROCESSABLE_ENTITY;
    /// A bug; the detail is in the server log only.
    Internal = "internal", INTERNAL_SERVER_ERROR;
    RegistryUnavailable = "registry_unavailable", SERVICE_UNAVAILABLE;
    /// The database cannot be reached or written, or did not take the
    /// write before the request's deadline; nothing changed, retryable.
    StoreUnavailable = "store_unavailable", SERVICE_UNAVAILABLE;
    /// The soak source could not be asked; nothing changed.
    SoakSourceUnavailable = "soak_source_unavailable", SERVICE_UNAVAILABLE;
    /// The server has no key to seal webhook secrets with.
    SecretKeyMissing = "secret_key_missing", SERVICE_UNAVAILABLE;
    /// The commit was sent but its outcome was not known by the deadline:
    /// the one non-2xx answer after which the pin may have moved. The
    /// client settles it by reading the pin back.
    CommitOutcomeUnknown = "commit_outcome_unknown", GATEWAY_TIMEOUT;
}

/// A request field that is parsed into a domain value: its name on the wire
/// and the code a value that fails to parse is refused with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    TemplateName,
    Region,
    ImageDigest,
    GitSha,
    Notes,
    /// A catalog entry's repository.
    Image,
    ExpectedDigest,
    ToDigest,
    CiRunUrl,
    /// The source repository label of a promotion.
    Repository,
    Workflow,
    BuildSequence,
    WebhookName,
    WebhookUrl,
    /// An event type given in a query (`type`).
    EventType,
    /// A webhook's event types.
    Events,
    /// A webhook's templates.
    Templates,
    InstanceId,
    Reason,
    Percent,
    TokenName,
    Scope,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::TemplateName => "template_name",
            Field::Region => "region",
            Field::ImageDigest => "image_digest",
            Field::GitSha => "git_sha",
            Field::Notes => "notes",
            Field::Image => "image",
            Field::ExpectedDigest => "expected_digest",
            Field::ToDigest => "to_digest",
            Field::CiRunUrl => "ci_run_url",
            Field::Repository => "repository",
            Field::Workflow => "workflow",
            Field::BuildSequence => "build_sequence",
            Field::WebhookName => "name",
            Field::WebhookUrl => "url",
            Field::EventType => "type",
            Field::Events => "events",
            Field::Templates => "templates",
            Field::InstanceId => "instance_id",
            Field::Reason => "reason",
            Field::Percent => "percent",
            Field::TokenName => "name",
            Field::Scope => "scope",
        }
    }

    pub fn code(self) -> Code {
        match self {
            Field::TemplateName => Code::InvalidTemplateName,
            Field::Region => Code::InvalidRegion,
            Field::ImageDigest | Field::ToDigest => Code::InvalidDigest,
            Field::GitSha => Code::InvalidGitSha,
            Field::Notes => Code::InvalidNotes,
            Field::Image => Code::InvalidRepository,
            Field::ExpectedDigest => Code::InvalidExpectedDigest,
            Field::CiRunUrl => Code::InvalidCiRunUrl,
            Field::Repository => Code::InvalidRepositoryLabel,
            Field::Workflow => Code::InvalidWorkflow,
            Field::BuildSequence => Code::InvalidBuildSequence,
            Field::WebhookName => Code::InvalidWebhookName,
            Field::WebhookUrl => Code::InvalidWebhookUrl,
            Field::EventType | Field::Events => Code::InvalidEventType,
            Field::Templates => Code::InvalidTemplateName,
            Field::InstanceId => Code::InvalidInstanceId,
            Field::Reason => Code::InvalidReason,
            Field::Percent => Code::InvalidPercent,
            Field::TokenName => Code::InvalidTokenName,
            Field::Scope => Code::InvalidScope,
        }
    }
}

/// An error answer: stable code (and so status), one line for the client,
/// and, for failures of the server itself, a detail for the log only.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// The current pin, sent along with a 409.
    pub pin: Option<Box<Pin>>,
    /// What the log says about a 5xx (the client sees only `message`).
    detail: Option<String>,
    /// Seconds to wait before trying again (429), sent as `Retry-After`.
    retry_after: Option<u64>,
}

/// Marks a response whose body is already a contract error, so the
/// normalising middleware leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContractBody;

/// The detail of a server failure, for the middleware to log with the
/// request's id; never sent to the client.
#[derive(Debug, Clone)]
pub(crate) struct LogDetail(pub String);

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
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
            code,
            message,
            pin: None,
            detail: None,
            retry_after: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// Sends the current pin along (409 answers).
    pub fn with_pin(mut self, pin: Option<Pin>) -> Self {
        self.pin = pin.map(Box::new);
        self
    }

    /// Asks the client to wait this many seconds (`Retry-After`).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The contract's body of this error, as bytes.
    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
            },
            pin: None,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Adds what the log, and only the log, says about this failure.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A bug or a broken invariant: `500 internal`, the detail logged.
    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError::new(Code::Internal, "internal error; see the server log").with_detail(detail)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// A field that failed validation: 422 with the field's code.
    pub fn invalid(field: Field, err: &ParseError) -> Self {
        Self::new(
            field.code(),
            format!("`{}`: {}", field.name(), err.reason()),
        )
    }

    /// What an error status that no handler produced becomes: a 405 from
    /// routing, a 408 from the timeout layer, and so on.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => (Code::NotFound, "no such endpoint"),
            StatusCode::METHOD_NOT_ALLOWED => (
                Code::MethodNotAllowed,
                "this endpoint does not take that method",
            ),
            StatusCode::REQUEST_TIMEOUT => (Code::RequestTimeout, "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => {
                (Code::PayloadTooLarge, "the request body is too large")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (Code::UnsupportedMediaType, "the request body must be JSON")
            }
            StatusCode::URI_TOO_LONG => (Code::UriTooLong, "the request target is too long"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                Code::HeadersTooLarge,
                "the request has too many headers, or headers too large",
            ),
            StatusCode::BAD_REQUEST => (
                Code::BadRequest,
                "the request is not valid HTTP/1.1 (its request line, a header or the framing of its body)",
            ),
            status if status.is_client_error() => (Code::BadRequest, "the request is not valid"),
            status => {
                return ApiError::internal(format!("a layer answered {status} without a body"));
            }
        };
        Self::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
            },
            pin: self.pin.map(|pin| *pin),
        };
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        response.extensions_mut().insert(ContractBody);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if let Some(detail) = self.detail {
            response.extensions_mut().insert(LogDetail(detail));
        }
        response
    }
}

/// A lost connection or an IO failure is `503 store_unavailable`: retry
/// later, nothing changed. Anything else (a statement that failed, a
/// constraint, a row that does not decode) is a bug: `500 internal`.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            ApiError::new(
                Code::StoreUnavailable,
                "the store is unavailable; nothing was changed",
            )
            .with_detail(err.to_string())
        } else {
            ApiError::internal(err.to_string())
        }
    }
}

/// An error and its causes on one line, each cause once (a message that
/// already says its cause's words does not repeat them).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes in the "Error codes" table of `docs/api.md`, with the status
    /// of their row.
    fn documented() -> Vec<(u16, String)> {
        let api = include_str!("../../../docs/api.md");
        let table = api
            .split("### Error codes")
            .nth(1)
            .expect("docs/api.md has an `### Error codes` section");
        let mut codes = Vec::new();
        for line in table.lines().skip_while(|line| !line.starts_with('|')) {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Some(Ok(status)) = cells.get(1).map(|cell| cell.parse::<u16>()) else {
                continue;
            };
            for code in cells[2].split(',') {
                codes.push((status, code.trim().trim_matches('`').to_owned()));
            }
        }
        codes
    }

    #[test]
    fn every_code_is_documented_with_its_status_and_every_documented_code_exists() {
        let documented = documented();
        for code in Code::ALL {
            let row = (code.status().as_u16(), code.as_str().to_owned());
            assert!(
                documented.contains(&row),
                "`{}` ({}) is not in the error table of docs/api.md",
                row.1,
                row.0
            );
        }
        for (status, code) in &documented {
            assert!(
                Code::ALL
                    .iter()
                    .any(|known| known.as_str() == code && known.status().as_u16() == *status),
                "docs/api.md lists `{code}` ({status}), which the server does not answer"
            );
        }
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "`{}` twice", code.as_str());
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "`{}`",
                code.as_str()
            );
        }
    }
}
