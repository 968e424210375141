//! One function per endpoint of the contract. Each one authenticates, parses
//! its input into domain types, and only then reads or writes.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pinion_api::{
    Health, Pin, PinList, PinResponse, PromoteRequest, Resolved, Runtime, RuntimeList,
    RuntimeUpdate,
};
use pinion_core::{Digest, GitSha, Notes, Region, Repository, Scope, TemplateName};
use pinion_store::{PinRecord, PromoteOutcome, Promotion, RuntimeRecord};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::RegistryCheck;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{AppState, View};

pub async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Promote)?;
    let request: PromoteRequest = read_json(body, state.settings().body_limit).await?;
    let template = parse_field("template_name", TemplateName::parse(&request.template_name))?;
    let digest = parse_field("image_digest", Digest::parse(&request.image_digest))?;
    let region = match request.region.as_deref() {
        None => Region::global(),
        Some(region) => parse_field("region", Region::parse(region))?,
    };
    let git_sha = optional_field("git_sha", request.git_sha.as_deref(), GitSha::parse)?;
    let notes = optional_field("notes", request.notes.as_deref(), Notes::parse)?;
    caller.require_template(&template)?;
    if state.settings().registry_check != RegistryCheck::Off {
        tracing::debug!("registry existence check is not available in this build; skipped");
    }

    let promotion = Promotion {
        template,
        region,
        digest,
        git_sha,
        notes,
        actor: caller.name.clone(),
        at: now(),
    };
    let outcome = state.write(move |store| store.promote(&promotion)).await?;
    let view = state.view();
    match outcome {
        PromoteOutcome::Moved { pin, previous } => {
            tracing::info!(
                template = %pin.template, region = %pin.region, digest = %pin.digest,
                previous = previous.as_ref().map(Digest::as_str).unwrap_or("none"),
                "pin moved"
            );
            Ok((
                StatusCode::CREATED,
                Json(PinResponse {
                    pin: pin_body(&view, &pin),
                }),
            )
                .into_response())
        }
        PromoteOutcome::Unchanged { pin } => Ok((
            StatusCode::OK,
            Json(PinResponse {
                pin: pin_body(&view, &pin),
            }),
        )
            .into_response()),
        PromoteOutcome::UnknownTemplate => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_template",
            format!(
                "template `{}` is not in the catalog; add it with `PUT /cp/admin/runtimes/{}` or `pinion template add`",
                request.template_name, request.template_name
            ),
        )),
        PromoteOutcome::NotPinnable => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "template_not_pinnable",
            format!(
                "template `{}` is marked not pinnable in the catalog",
                request.template_name
            ),
        )),
    }
}

pub async fn list_pins(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<PinList>, ApiError> {
    caller.require(Scope::Read)?;
    let query = Query::parse(query.as_deref());
    let template = query
        .non_empty("template_name")
        .map(|value| parse_field("template_name", TemplateName::parse(value)))
        .transpose()?;
    let region = query
        .non_empty("region")
        .map(|value| parse_field("region", Region::parse(value)))
        .transpose()?;
    let view = state.view();
    let pins = view
        .pins
        .values()
        .filter(|pin| template.as_ref().is_none_or(|t| *t == pin.template))
        .filter(|pin| region.as_ref().is_none_or(|r| *r == pin.region))
        .filter(|pin| caller.may_use(&pin.template))
        .map(|pin| pin_body(&view, pin))
        .collect();
    Ok(Json(PinList { pins }))
}

pub async fn resolve(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Resolved>, ApiError> {
    caller.require(Scope::Read)?;
    let query = Query::parse(query.as_deref());
    let template = parse_field(
        "template_name",
        TemplateName::parse(query.get("template_name").unwrap_or_default()),
    )?;
    let region = match query.non_empty("region") {
        None => Region::global(),
        Some(region) => parse_field("region", Region::parse(region))?,
    };
    caller.require_template(&template)?;
    let view = state.view();
    let pin = view
        .pins
        .get(&(template.clone(), region.clone()))
        .or_else(|| view.pins.get(&(template.clone(), Region::global())))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "runtime_pin_missing",
                format!("no pin for template `{template}` in region `{region}` nor in `global`"),
            )
        })?;
    Ok(Json(Resolved {
        template_name: template.to_string(),
        region: region.to_string(),
        matched_region: pin.region.to_string(),
        image_digest: pin.digest.to_string(),
        image_ref: image_ref(&view, pin),
    }))
}

pub async fn list_runtimes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RuntimeList>, ApiError> {
    caller.require(Scope::Read)?;
    let view = state.view();
    let runtimes = view
        .runtimes
        .values()
        .filter(|runtime| caller.may_use(&runtime.name))
        .map(runtime_body)
        .collect();
    Ok(Json(RuntimeList { runtimes }))
}

#[derive(serde::Serialize)]
struct RuntimeResponse {
    runtime: Runtime,
}

pub async fn put_runtime(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let name = parse_field("template_name", TemplateName::parse(&name))?;
    let update: RuntimeUpdate = read_json(body, state.settings().body_limit).await?;
    let repository = optional_field("image", update.image.as_deref(), Repository::parse)?;
    caller.require_template(&name)?;
    let runtime = RuntimeRecord {
        name,
        repository,
        pinnable: update.pinnable,
    };
    let stored = runtime.clone();
    let created = state
        .write(move |store| store.put_runtime(&stored, now()))
        .await?;
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

pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database is not reachable",
        )
    };
    let ping = tokio::task::spawn_blocking(move || state.ping());
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(Ok(()))) => Ok(Json(Health {
            status: "ready".into(),
        })),
        Ok(Ok(Err(err))) => {
            tracing::warn!(error = %err, "readiness check failed");
            Err(unavailable())
        }
        _ => Err(unavailable()),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::from_status(StatusCode::NOT_FOUND)
}

/// Reads a bounded body and decodes it: 413 when too large, 400 when it is
/// not JSON, 422 when it is JSON of the wrong shape.
async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes or could not be read"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the request body has the wrong shape: {err}"),
            ),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON: {err}"),
            ),
        }
    })
}

fn parse_field<T>(
    field: &'static str,
    value: Result<T, pinion_core::ParseError>,
) -> Result<T, ApiError> {
    value.map_err(|err| ApiError::invalid(field, &err))
}

fn optional_field<T>(
    field: &'static str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, pinion_core::ParseError>,
) -> Result<Option<T>, ApiError> {
    value
        .map(|value| parse_field(field, parse(value)))
        .transpose()
}

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    // Microseconds are plenty and keep the text a fixed, sortable width.
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

fn image_ref(view: &View, pin: &PinRecord) -> Option<String> {
    view.runtimes
        .get(&pin.template)
        .and_then(|runtime| runtime.repository.as_ref())
        .map(|repository| format!("{repository}@{}", pin.digest))
}

fn pin_body(view: &View, pin: &PinRecord) -> Pin {
    Pin {
        template_name: pin.template.to_string(),
        region: pin.region.to_string(),
        image_digest: pin.digest.to_string(),
        image_ref: image_ref(view, pin),
        git_sha: pin.git_sha.as_ref().map(|sha| sha.as_str().to_owned()),
        notes: pin.notes.as_ref().map(|notes| notes.as_str().to_owned()),
        promoted_at: pin.promoted_at.format(&Rfc3339).unwrap_or_default(),
        promoted_by: pin.promoted_by.to_string(),
    }
}

fn runtime_body(runtime: &RuntimeRecord) -> Runtime {
    Runtime {
        name: runtime.name.to_string(),
        image: runtime.repository.as_ref().map(|repo| repo.to_string()),
        pinnable: runtime.pinnable,
    }
}

/// A decoded query string. Unknown keys are ignored; a repeated key keeps its
/// first value.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The value, treating `?key=` like an absent key.
    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|value| !value.is_empty())
    }
}
