//! One function per endpoint of the contract. Each one authenticates, parses
//! its input into domain types, and only then reads or writes. Write
//! endpoints record their refusals in the audit log.

mod canary;
mod catalog;
mod events;
mod fleet;
mod health;
mod history;
mod holds;
mod pins;
mod tokens;
mod watch;
mod webhooks;

pub(crate) use canary::abort_pin_canary;
pub use canary::{abort_canary, start_canary};
pub use catalog::{list_runtimes, put_runtime};
pub use events::events;
pub(crate) use events::events as event_stream;
pub use fleet::{delete_instance, fleet, instances, report, retention};
pub use health::{healthz, not_found, readyz, version};
pub use history::{audit, history};
pub use holds::{hold, release};
pub(crate) use holds::{hold_pin, release_pin};
pub(crate) use pins::rollback_request;
pub use pins::{list_pins, promote, resolve, rollback};
pub use tokens::{create_token, list_tokens, revoke_token};
pub use watch::{drift, metrics};
pub use webhooks::{delete_webhook, deliveries, list_webhooks, put_webhook, redeliver};

use axum::body::Body;
use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::{Pin, Runtime};
use pinion_core::{ImageRef, ParseError, Region, TemplateName, TokenName};
use pinion_store::{PinRecord, Refusal, RuntimeRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::state::AppState;
use crate::view::View;

pub(crate) use crate::query::Query;

/// What a write attempt had established when it ended, for the audit log.
pub(crate) struct Attempt {
    action: &'static str,
    source: Source,
    actor: Option<TokenName>,
    template: Option<TemplateName>,
    region: Option<Region>,
}

impl Attempt {
    pub(crate) fn new(action: &'static str, source: Source) -> Attempt {
        Attempt {
            action,
            source,
            actor: None,
            template: None,
            region: None,
        }
    }

    /// Parses the pin a write names (region `global` when absent),
    /// remembering it for the audit log.
    pub(crate) fn pin(
        &mut self,
        template: &str,
        region: Option<&str>,
    ) -> Result<(TemplateName, Region), ApiError> {
        let template = parse_field(Field::TemplateName, TemplateName::parse(template))?;
        self.template = Some(template.clone());
        let region = match region {
            None => Region::global(),
            Some(region) => parse_field(Field::Region, Region::parse(region))?,
        };
        self.region = Some(region.clone());
        Ok((template, region))
    }

    /// The pin a `?template_name=T&region=R` query names (region default
    /// `global`).
    fn pin_in_query(&mut self, raw: Option<&str>) -> Result<(TemplateName, Region), ApiError> {
        let query = Query::parse(raw);
        let template = query.one("template_name")?.unwrap_or_default();
        let region = query.one("region")?;
        self.pin(&template, region.as_deref())
    }

    /// Unwraps the authentication result, remembering who it was.
    pub(crate) fn caller(&mut self, caller: Result<Caller, ApiError>) -> Result<Caller, ApiError> {
        let caller = caller?;
        self.actor = Some(caller.name().clone());
        Ok(caller)
    }
}

/// Passes the answer through, recording it first if it is a refused write
/// (403, 409, 422 of a valid token). A write refused for want of a valid
/// token (401, 429) is only counted, per source, and summarised in the
/// audit log once a minute ([`crate::failures`]): strangers cost no write
/// and cannot push real refusals out. The audit keeps names and codes,
/// never a secret.
pub(crate) async fn audited(
    state: &AppState,
    attempt: Attempt,
    result: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let Err(error) = &result else { return result };
    if matches!(error.code, Code::Unauthorized | Code::TooManyAuthFailures) {
        state.auth_failures().note_refused_write(
            attempt.source.0,
            attempt.action,
            error.code.as_str(),
            now(),
        );
        return result;
    }
    // Refusals by a rule, and a soak source that could not be asked (a
    // policy refusal on-call must find, not a fault of this server's).
    let audited_status = matches!(error.status().as_u16(), 403 | 409 | 422 | 423)
        || error.code == Code::SoakSourceUnavailable;
    if audited_status {
        let refusal = Refusal {
            at: now(),
            actor: attempt.actor,
            template: attempt.template,
            region: attempt.region,
            action: attempt.action.to_owned(),
            status: error.status().as_u16(),
            code: error.code.as_str().to_owned(),
            source: None,
            count: 1,
        };
        if let Err(err) = state.record_refusal(refusal).await {
            tracing::warn!(
                code = err.code.as_str(),
                "could not record a refusal in the audit log"
            );
        }
    }
    result
}

/// Reads a bounded body by the deadline and decodes it: 413 when too large,
/// 400 when it ends early, its framing is broken or it is not JSON, 408
/// when it does not arrive in time, 422 when it is JSON of the wrong shape.
async fn read_json<T: DeserializeOwned>(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: &Deadline,
) -> Result<T, ApiError> {
    json_content_type(headers)?;
    let bytes = crate::body::read(body, limit, deadline).await?;
    // Every body of the API is an object: serde would build a struct from
    // an array by position (`["codex", "sha256:…"]` a promotion, `[null]` a
    // catalog entry without its repository), so anything else is refused.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => ApiError::new(
                    Code::BodyNotObject,
                    "the request body must be a JSON object (`{…}`)",
                ),
                Err(err) => ApiError::new(
                    Code::MalformedJson,
                    format!("the request body is not valid JSON: {err}"),
                ),
            },
        );
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => ApiError::new(
                Code::InvalidRequest,
                format!("the request body has the wrong shape: {err}"),
            ),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                Code::MalformedJson,
                format!("the request body is not valid JSON: {err}"),
            ),
        }
    })
}

/// The body's media type: JSON (`application/json`, or any `+json`), none
/// at all, or the form type `curl -d` sends (pipelines post JSON that way);
/// anything else is `415`.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|text| text.split(';').next())
        .map(|text| text.trim().to_ascii_lowercase());
    let accepted = essence.as_deref().is_some_and(|essence| {
        essence == "application/json"
            || essence == "application/x-www-form-urlencoded"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if accepted {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::UnsupportedMediaType,
            "the request body must be JSON (`Content-Type: application/json`)",
        ))
    }
}

fn parse_field<T>(field: Field, value: Result<T, ParseError>) -> Result<T, ApiError> {
    value.map_err(|err| ApiError::invalid(field, &err))
}

fn optional_field<T>(
    field: Field,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, ApiError> {
    value
        .map(|value| parse_field(field, parse(value)))
        .transpose()
}

fn now() -> OffsetDateTime {
    let now = crate::clock::now();
    // Microseconds are plenty and keep the text a fixed, sortable width.
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

/// RFC 3339. A stored time always formats (the store parsed it from RFC
/// 3339); should one ever not, it is shown as is rather than as nothing.
pub(crate) fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

fn image_ref(view: &View, pin: &PinRecord) -> Option<String> {
    view.runtimes
        .get(&pin.template)
        .and_then(|runtime| runtime.repository.as_ref())
        .map(|repository| ImageRef::new(repository.clone(), pin.digest.clone()).to_string())
}

pub(crate) fn pin_body(view: &View, pin: &PinRecord) -> Pin {
    Pin {
        template_name: pin.template.to_string(),
        region: pin.region.to_string(),
        image_digest: pin.digest.to_string(),
        image_ref: image_ref(view, pin),
        git_sha: pin.git_sha.as_ref().map(|sha| sha.as_str().to_owned()),
        notes: pin.notes.as_ref().map(|notes| notes.as_str().to_owned()),
        promoted_at: format_time(pin.promoted_at),
        promoted_by: pin.promoted_by.to_string(),
        revision: pin.revision,
        build_sequence: pin.build_sequence,
        hold: pin.hold.as_ref().map(|hold| hold_body(pin, hold)),
        canary: pin.canary.as_ref().map(|canary| pinion_api::PinCanary {
            image_digest: canary.digest.to_string(),
            image_ref: view
                .runtimes
                .get(&pin.template)
                .and_then(|runtime| runtime.repository.as_ref())
                .map(|repository| {
                    ImageRef::new(repository.clone(), canary.digest.clone()).to_string()
                }),
            percent: canary.percent.get(),
            started_at: format_time(canary.started_at),
            started_by: canary.started_by.to_string(),
        }),
        ci_run_url: pin.ci_run_url.as_ref().map(|url| url.as_str().to_owned()),
    }
}

/// `423 pin_held` for a change of `what` (promotions, canaries) to a held
/// pin: who held it, since when, why, and how to force past it.
fn held_refusal(pin: &PinRecord, what: &str, forced_without_admin: bool) -> ApiError {
    let (by, since, reason) = pin.hold.as_ref().map_or_else(
        || (String::new(), String::new(), String::new()),
        |hold| {
            (
                hold.held_by.to_string(),
                format_time(hold.held_at),
                hold.reason.as_str().to_owned(),
            )
        },
    );
    let forcing = if forced_without_admin {
        "`force` needs a token of scope `admin`"
    } else {
        "an `admin` token with `force` overrides"
    };
    ApiError::new(
        Code::PinHeld,
        format!(
            "the pin for `{}`/`{}` is held by `{by}` since {since}: {reason}; {what} are refused until it is released ({forcing}); nothing was changed",
            pin.template, pin.region
        ),
    )
}

fn hold_body(pin: &PinRecord, hold: &pinion_store::Hold) -> pinion_api::Hold {
    pinion_api::Hold {
        template_name: pin.template.to_string(),
        region: pin.region.to_string(),
        reason: hold.reason.as_str().to_owned(),
        held_by: hold.held_by.to_string(),
        held_at: format_time(hold.held_at),
    }
}

fn runtime_body(runtime: &RuntimeRecord) -> Runtime {
    Runtime {
        name: runtime.name.to_string(),
        image: runtime.repository.as_ref().map(|repo| repo.to_string()),
        pinnable: runtime.pinnable,
    }
}

/// The ETag of a list answer: the view's content digest and a hash of the
/// request (and, for a template-restricted token, which sees less, its
/// name). Equal content gives equal tags on every replica and after restarts.
fn etag(view: &View, caller: &Caller, parts: &[&str]) -> HeaderValue {
    let restricted = caller.templates().map(|_| caller.name().as_str());
    let hash = restricted
        .iter()
        .chain(parts)
        .fold(FNV_OFFSET, |hash, part| {
            fnv1a(fnv1a(hash, part.as_bytes()), &[0])
        });
    tag_value(&view.content_tag[..8], hash)
}

/// The ETag of a resolve answer: a hash of its bytes (and of the name of a
/// template-restricted token). It changes exactly when the answer does, so
/// an answer the view keeps across writes to other templates keeps its tag.
fn body_etag(caller: &Caller, body: &[u8]) -> HeaderValue {
    let restricted = caller.templates().map(|_| caller.name().as_str());
    let named = restricted.map_or(FNV_OFFSET, |name| {
        fnv1a(fnv1a(FNV_OFFSET, name.as_bytes()), &[0])
    });
    tag_value(b"resolve:", fnv1a(named, body))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: this runs on every read, over a few short strings.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// `"<prefix hex><hash hex>"`.
fn tag_value(prefix: &[u8], hash: u64) -> HeaderValue {
    let mut tag = String::with_capacity(2 + 2 * (prefix.len() + 8));
    tag.push('"');
    for byte in prefix.iter().chain(&hash.to_be_bytes()) {
        tag.push(char::from(HEX[usize::from(byte >> 4)]));
        tag.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    tag.push('"');
    // Quotes and hex digits only: always a valid header value.
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A 200 JSON answer with its ETag, or a bodiless 304 when the caller
/// already has it (`If-None-Match`).
fn cached_json(headers: &HeaderMap, etag: HeaderValue, body: impl FnOnce() -> Bytes) -> Response {
    let tag = etag.to_str().unwrap_or_default();
    let matches = headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.split(',').any(|candidate| {
                let candidate = candidate.trim();
                candidate == "*" || candidate.trim_start_matches("W/") == tag
            })
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body(),
        )
            .into_response()
    };
    response.headers_mut().insert(ETAG, etag);
    response
}

/// Serialises a body; serde_json cannot fail on these plain structs.
fn to_bytes(body: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}
