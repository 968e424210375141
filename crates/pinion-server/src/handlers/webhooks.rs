//! Webhook subscriptions (admin): create or change, list, delete, the
//! delivery log, and redelivery. A template-restricted admin token sees and
//! manages only webhooks restricted to templates it may use.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pinion_api::{
    Delivery, DeliveryList, Webhook, WebhookCreated, WebhookList, WebhookRequest, WebhookResponse,
};
use pinion_core::{EventType, Scope, TemplateName, WebhookName, WebhookUrl};
use pinion_store::{
    DeliveryRecord, DeliveryState, Redelivery, WebhookPut, WebhookRecord, WebhookUpdate,
};
use time::OffsetDateTime;

use super::{Attempt, Query, audited, format_time, now, parse_field, read_json};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::seal::new_webhook_secret;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

fn webhook_body(webhook: &WebhookRecord) -> Webhook {
    Webhook {
        name: webhook.name.to_string(),
        url: webhook.url.as_str().to_owned(),
        events: webhook
            .events
            .as_ref()
            .map(|events| events.iter().map(|kind| kind.as_str().to_owned()).collect()),
        templates: webhook
            .templates
            .as_ref()
            .map(|templates| templates.iter().map(ToString::to_string).collect()),
        created_at: format_time(webhook.created_at),
        disabled_at: webhook.disabled_at.map(format_time),
        disabled_reason: webhook.disabled_reason.clone(),
    }
}

fn delivery_body(delivery: &DeliveryRecord) -> Delivery {
    let at = |ms: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map(format_time)
            .ok()
    };
    Delivery {
        event_id: delivery.event_id,
        state: delivery.state.as_str().to_owned(),
        attempts: delivery.attempts,
        last_status: delivery.last_status,
        last_error: delivery.last_error.clone(),
        next_attempt_at: (delivery.state == DeliveryState::Pending)
            .then(|| at(delivery.next_attempt_ms))
            .flatten(),
        delivered_at: delivery.delivered_ms.and_then(at),
    }
}

/// Whether a token may see and manage this webhook: any, for an
/// unrestricted token; for a restricted one, only webhooks restricted to
/// templates it may use.
fn visible(caller: &Caller, templates: Option<&[TemplateName]>) -> bool {
    match (caller.templates(), templates) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(_), Some(templates)) => templates.iter().all(|template| caller.may_use(template)),
    }
}

/// The host of a webhook URL, for the log.
fn host(url: &WebhookUrl) -> String {
    reqwest::Url::parse(url.as_str())
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default()
}

fn not_found(name: &WebhookName) -> ApiError {
    ApiError::new(Code::WebhookNotFound, format!("no webhook `{name}`"))
}

/// Parses a list field: absent is `None` (all); present must be a
/// non-empty list of valid values, kept sorted and without repeats.
fn list<T: Ord>(
    field: Field,
    values: Option<&[String]>,
    parse: impl Fn(&str) -> Result<T, pinion_core::ParseError>,
) -> Result<Option<Vec<T>>, ApiError> {
    let Some(values) = values else {
        return Ok(None);
    };
    if values.is_empty() {
        return Err(ApiError::new(
            field.code(),
            format!(
                "`{}` must list at least one value, or be left out for all",
                field.name()
            ),
        ));
    }
    let mut parsed = values
        .iter()
        .map(|value| parse_field(field, parse(value)))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(Some(parsed))
}

pub async fn put_webhook(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("put_webhook", source);
    let result = put_webhook_inner(&state, &mut attempt, caller, &name, &headers, body).await;
    audited(&state, attempt, result).await
}

async fn put_webhook_inner(
    state: &AppState,
    attempt: &mut Attempt,
    caller: Result<Caller, ApiError>,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = attempt.caller(caller)?;
    caller.require(Scope::Admin)?;
    let name = parse_field(Field::WebhookName, WebhookName::parse(name))?;
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let request: WebhookRequest =
        read_json(body, headers, state.settings().body_limit, &deadline).await?;
    let url = parse_field(Field::WebhookUrl, WebhookUrl::parse(&request.url))?;
    if let Err(err) = reqwest::Url::parse(url.as_str()) {
        return Err(ApiError::new(
            Code::InvalidWebhookUrl,
            format!("`url`: not a URL: {err}"),
        ));
    }
    if !state.settings().webhook_allow_private {
        if let Some(why) = crate::targets::refused(&url) {
            return Err(ApiError::new(
                Code::InvalidWebhookUrl,
                format!(
                    "`url`: {why}; webhooks may not point inside this server's network (an operator may allow it with `--webhook-allow-private true`)"
                ),
            ));
        }
    }
    let events = list(Field::Events, request.events.as_deref(), EventType::parse)?;
    let templates = list(
        Field::Templates,
        request.templates.as_deref(),
        TemplateName::parse,
    )?;
    if !visible(&caller, templates.as_deref()) {
        return Err(ApiError::forbidden(format!(
            "token `{}` is restricted to templates, so its webhooks must list only those templates",
            caller.name()
        )));
    }
    if caller.templates().is_some() {
        let looked_up = name.clone();
        let existing = state
            .query(deadline, move |store| store.webhook(&looked_up))
            .await?;
        if existing.is_some_and(|webhook| !visible(&caller, webhook.templates.as_deref())) {
            return Err(ApiError::forbidden(format!(
                "token `{}` may not change webhook `{name}`",
                caller.name()
            )));
        }
    }
    let key = state.settings().secret_key.as_ref().ok_or_else(|| {
        ApiError::new(
            Code::SecretKeyMissing,
            "this server has no secret key to seal webhook secrets with; set \
             `PINION_SECRET_KEY_FILE` (the same file on every replica)",
        )
    })?;
    let sealing = || -> Result<(Vec<u8>, String), crate::seal::SealError> {
        let (raw, shown) = new_webhook_secret()?;
        Ok((key.seal(name.as_str(), &raw)?, shown))
    };
    let (sealed_secret, shown) =
        sealing().map_err(|err| ApiError::internal(format!("could not make a secret: {err}")))?;
    let update = WebhookUpdate {
        name: name.clone(),
        url,
        events,
        templates,
        sealed_secret,
        at: now(),
    };
    match state.put_webhook(update, deadline).await? {
        WebhookPut::Created(webhook) => {
            // The URL's host only: its path or query may be the receiver's
            // secret.
            tracing::info!(webhook = %webhook.name, host = host(&webhook.url), "webhook created");
            Ok((
                StatusCode::CREATED,
                Json(WebhookCreated {
                    webhook: webhook_body(&webhook),
                    secret: shown,
                }),
            )
                .into_response())
        }
        WebhookPut::Changed(webhook) => {
            tracing::info!(webhook = %webhook.name, host = host(&webhook.url), "webhook changed");
            Ok(Json(WebhookResponse {
                webhook: webhook_body(&webhook),
            })
            .into_response())
        }
    }
}

pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<WebhookList>, ApiError> {
    caller.require(Scope::Admin)?;
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    let webhooks = state.webhooks(deadline).await?;
    Ok(Json(WebhookList {
        webhooks: webhooks
            .iter()
            .filter(|webhook| visible(&caller, webhook.templates.as_deref()))
            .map(webhook_body)
            .collect(),
    }))
}

pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("delete_webhook", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Admin)?;
        let name = parse_field(Field::WebhookName, WebhookName::parse(&name))?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let looked_up = name.clone();
        let existing = state
            .query(deadline, move |store| store.webhook(&looked_up))
            .await?;
        match existing {
            Some(webhook) if visible(&caller, webhook.templates.as_deref()) => {}
            _ => return Err(not_found(&name)),
        }
        if !state.delete_webhook(name.clone(), deadline).await? {
            return Err(not_found(&name));
        }
        tracing::info!(webhook = %name, "webhook deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    audited(&state, attempt, result).await
}

pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    caller.require(Scope::Admin)?;
    let name = parse_field(Field::WebhookName, WebhookName::parse(&name))?;
    let query = Query::parse(raw.as_deref());
    let limit = query.number("limit", MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize;
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    let (webhook, deliveries) = state.deliveries(name.clone(), limit, deadline).await?;
    match webhook {
        Some(webhook) if visible(&caller, webhook.templates.as_deref()) => {}
        _ => return Err(not_found(&name)),
    }
    Ok(Json(DeliveryList {
        deliveries: deliveries.iter().map(delivery_body).collect(),
    }))
}

pub async fn redeliver(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    Path((name, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("redeliver", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Admin)?;
        let name = parse_field(Field::WebhookName, WebhookName::parse(&name))?;
        let event_id = event_id
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::new(
                    Code::InvalidRequest,
                    "the event id must be a whole number above 0",
                )
            })?;
        let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
        let looked_up = name.clone();
        let existing = state
            .query(deadline, move |store| store.webhook(&looked_up))
            .await?;
        match existing {
            Some(webhook) if visible(&caller, webhook.templates.as_deref()) => {}
            _ => return Err(not_found(&name)),
        }
        match state.redeliver(name.clone(), event_id, deadline).await? {
            Redelivery::Queued => Ok(StatusCode::ACCEPTED.into_response()),
            Redelivery::Unknown => Err(ApiError::new(
                Code::DeliveryNotFound,
                format!("webhook `{name}` has no delivery of event {event_id}"),
            )),
            Redelivery::Disabled => Err(ApiError::new(
                Code::WebhookDisabled,
                format!("webhook `{name}` is disabled; PUT it again to enable it"),
            )),
        }
    }
    .await;
    audited(&state, attempt, result).await
}
