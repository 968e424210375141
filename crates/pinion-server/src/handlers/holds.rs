//! Holds: a held pin refuses promotions until it is released.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::HoldResponse;
use pinion_core::{HoldReason, Region, Scope, TemplateName};
use pinion_store::{HoldOutcome, HoldRequest, Release, ReleaseOutcome};

use super::{Attempt, audited, hold_body, now, parse_field, read_json};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::state::AppState;

/// `POST /cp/admin/runtime-image/hold`: `201` held now, `200` held already
/// (the first hold and its reason stand).
pub async fn hold(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("hold", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Promote)?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let request: pinion_api::HoldRequest =
            read_json(body, &headers, state.settings().body_limit, &deadline).await?;
        hold_pin(&state, &mut attempt, &caller, request, deadline).await
    }
    .await;
    audited(&state, attempt, result).await
}

/// A hold as asked for, by a caller of scope `promote` (the API's JSON
/// body, or the page's form).
pub(crate) async fn hold_pin(
    state: &AppState,
    attempt: &mut Attempt,
    caller: &Caller,
    request: pinion_api::HoldRequest,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let (template, region) = attempt.pin(&request.template_name, request.region.as_deref())?;
    let reason = parse_field(Field::Reason, HoldReason::parse(&request.reason))?;
    caller.require_template(&template)?;
    state.known_region(&region)?;
    let hold = HoldRequest {
        template: template.clone(),
        region: region.clone(),
        reason,
        actor: caller.name().clone(),
        at: now(),
    };
    let (status, pin) = match state.hold(hold, deadline).await? {
        HoldOutcome::Held { pin } => (StatusCode::CREATED, pin),
        HoldOutcome::AlreadyHeld { pin } => (StatusCode::OK, pin),
        HoldOutcome::NoPin => {
            return Err(ApiError::new(
                Code::RuntimePinMissing,
                format!("no pin for `{template}`/`{region}` to hold"),
            ));
        }
    };
    let Some(hold) = pin.hold.as_ref() else {
        return Err(ApiError::internal("a held pin came back without its hold"));
    };
    tracing::info!(template = %pin.template, region = %pin.region, held_by = %hold.held_by, "pin held");
    Ok((
        status,
        Json(HoldResponse {
            hold: hold_body(&pin, hold),
        }),
    )
        .into_response())
}

/// `DELETE /cp/admin/runtime-image/hold?template_name=T&region=R`: `200`
/// with the hold released, `404 hold_not_found` when the pin is not held.
pub async fn release(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("release", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Promote)?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let (template, region) = attempt.pin_in_query(raw.as_deref())?;
        release_pin(&state, &caller, template, region, deadline).await
    }
    .await;
    audited(&state, attempt, result).await
}

/// Releases a pin's hold, for a caller of scope `promote`.
pub(crate) async fn release_pin(
    state: &AppState,
    caller: &Caller,
    template: TemplateName,
    region: Region,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    caller.require_template(&template)?;
    let release = Release {
        template: template.clone(),
        region: region.clone(),
        actor: caller.name().clone(),
        at: now(),
    };
    match state.release(release, deadline).await? {
        ReleaseOutcome::Released { pin, hold } => {
            tracing::info!(template = %pin.template, region = %pin.region, "pin released");
            Ok(Json(HoldResponse {
                hold: hold_body(&pin, &hold),
            })
            .into_response())
        }
        ReleaseOutcome::NotHeld => Err(ApiError::new(
            Code::HoldNotFound,
            format!("the pin for `{template}`/`{region}` is not held"),
        )),
    }
}
