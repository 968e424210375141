//! The template catalog: `GET /cp/runtimes`, `PUT /cp/admin/runtimes/{name}`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::{RuntimeList, RuntimeResponse, RuntimeUpdate};
use pinion_core::{Repository, Scope, TemplateName};
use pinion_store::RuntimeRecord;

use super::{Attempt, audited, now, optional_field, parse_field, read_json, runtime_body};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Field};
use crate::state::AppState;

pub async fn list_runtimes(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<RuntimeList>, ApiError> {
    caller.require(Scope::Read)?;
    state.ensure_fresh(&headers).await?;
    let view = state.view();
    let runtimes = view
        .runtimes
        .values()
        .filter(|runtime| caller.may_use(&runtime.name))
        .map(runtime_body)
        .collect();
    Ok(Json(RuntimeList { runtimes }))
}

pub async fn put_runtime(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("put_runtime", source);
    let result = put_runtime_inner(&state, &mut attempt, caller, &name, &headers, body).await;
    audited(&state, attempt, result).await
}

async fn put_runtime_inner(
    state: &AppState,
    attempt: &mut Attempt,
    caller: Result<Caller, ApiError>,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = attempt.caller(caller)?;
    caller.require(Scope::Admin)?;
    let name = parse_field(Field::TemplateName, TemplateName::parse(name))?;
    attempt.template = Some(name.clone());
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let update: RuntimeUpdate =
        read_json(body, headers, state.settings().body_limit, &deadline).await?;
    let repository = optional_field(Field::Image, update.image.as_deref(), Repository::parse)?;
    caller.require_template(&name)?;
    let runtime = RuntimeRecord {
        name,
        repository,
        pinnable: update.pinnable,
    };
    let created = state.put_runtime(runtime.clone(), now(), deadline).await?;
    tracing::info!(template = %runtime.name, created, "catalog entry stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RuntimeResponse {
            runtime: runtime_body(&runtime),
        }),
    )
        .into_response())
}
