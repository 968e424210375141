//! Canary rings: a pin's second digest, which the instances of a share of
//! the buckets resolve to, until it is promoted or aborted.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::PinResponse;
use pinion_core::{Digest, Percent, Region, Scope, TemplateName};
use pinion_store::{AbortCause, AbortOutcome, CanaryAbort, CanaryOutcome, CanaryRequest};

use super::{Attempt, audited, now, parse_field, pin_body, read_json};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::state::AppState;

/// `POST /cp/admin/runtime-image/canary`: `201 {"pin"}` started (or
/// replaced, or its share changed), `200` when the pin has that canary at
/// that share already.
pub async fn start_canary(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("canary", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Promote)?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let request: pinion_api::CanaryRequest =
            read_json(body, &headers, state.settings().body_limit, &deadline).await?;
        let (template, region) =
            attempt.pin(&request.template_name, request.region.as_deref())?;
        let digest = parse_field(Field::ImageDigest, Digest::parse(&request.image_digest))?;
        let percent = parse_field(Field::Percent, Percent::new(request.percent))?;
        caller.require_template(&template)?;
        state.known_region(&region)?;
        deadline
            .run(super::pins::check_registry(&state, &template, &digest), || {
                ApiError::new(
                    Code::RegistryUnavailable,
                    "the registry did not confirm the digest within the request's deadline; nothing was changed",
                )
            })
            .await?;
        let canary = CanaryRequest {
            template: template.clone(),
            region: region.clone(),
            digest,
            percent,
            actor: caller.name().clone(),
            at: now(),
            force: request.force,
            may_override_hold: caller.require(Scope::Admin).is_ok(),
        };
        let (status, pin) = match state.start_canary(canary, deadline).await? {
            CanaryOutcome::Started { pin, .. } => (StatusCode::CREATED, pin),
            CanaryOutcome::Unchanged { pin } => (StatusCode::OK, pin),
            CanaryOutcome::NoPin => {
                return Err(ApiError::new(
                    Code::RuntimePinMissing,
                    format!("no pin for `{template}`/`{region}` to put a canary on: promote a stable digest first"),
                ));
            }
            CanaryOutcome::IsStable { pin } => {
                return Err(ApiError::new(
                    Code::CanaryIsStable,
                    format!(
                        "`{}` is the pin's own digest for `{template}`/`{region}`: a canary of it changes nothing; nothing was changed",
                        pin.digest
                    ),
                ));
            }
            CanaryOutcome::Held { pin } => {
                let view = state.view();
                return Err(super::held_refusal(&pin, "canaries", request.force)
                    .with_pin(Some(pin_body(&view, &pin))));
            }
        };
        if let Some(canary) = &pin.canary {
            tracing::info!(template = %pin.template, region = %pin.region, digest = %canary.digest, percent = canary.percent.get(), "canary started");
        }
        let view = state.view();
        Ok((
            status,
            Json(PinResponse {
                pin: pin_body(&view, &pin),
                new_region: false,
            }),
        )
            .into_response())
    }
    .await;
    audited(&state, attempt, result).await
}

/// `DELETE /cp/admin/runtime-image/canary?template_name=T&region=R`: `200
/// {"pin"}` with the canary gone, `404 canary_not_found` when it has none.
pub async fn abort_canary(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("canary_abort", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Promote)?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let (template, region) = attempt.pin_in_query(raw.as_deref())?;
        abort_pin_canary(&state, &caller, template, region, deadline).await
    }
    .await;
    audited(&state, attempt, result).await
}

/// Aborts a pin's canary, for a caller of scope `promote`.
pub(crate) async fn abort_pin_canary(
    state: &AppState,
    caller: &Caller,
    template: TemplateName,
    region: Region,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    {
        caller.require_template(&template)?;
        let abort = CanaryAbort {
            template: template.clone(),
            region: region.clone(),
            digest: None,
            actor: caller.name().clone(),
            at: now(),
            cause: AbortCause::Requested,
            hold: None,
        };
        match state.abort_canary(abort, deadline).await? {
            AbortOutcome::Aborted { pin, canary } => {
                tracing::info!(template = %pin.template, region = %pin.region, digest = %canary.digest, "canary aborted");
                let view = state.view();
                Ok(Json(PinResponse {
                    pin: pin_body(&view, &pin),
                    new_region: false,
                })
                .into_response())
            }
            AbortOutcome::NoCanary => Err(ApiError::new(
                Code::CanaryNotFound,
                format!("the pin for `{template}`/`{region}` has no canary"),
            )),
        }
    }
}
