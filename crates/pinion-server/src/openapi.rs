//! The API's routes and their description, registered in one place: each
//! [`Operation`] carries its handler and what `GET /openapi.json` says of
//! it (parameters, body, answers, and every error code it can answer), so
//! a route cannot exist without its description or the other way round.
//! Body schemas are generated from `pinion-api`'s types (schemars, JSON
//! Schema 2020-12, as OpenAPI 3.1 takes it). The page's routes (`/ui…`,
//! HTML for browsers) are not part of it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::error::Code;
use crate::handlers;
use crate::state::AppState;

/// A body's schema, made by the generator that collects the components.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What an answer carries.
#[derive(Clone, Copy)]
pub enum Body {
    None,
    Json(SchemaOf),
    /// A media type that is not JSON (Prometheus text, an event stream).
    Other(&'static str),
}

#[derive(Clone, Copy)]
pub enum Kind {
    String,
    Integer,
}

/// A path, query or header parameter.
#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub location: &'static str,
    pub required: bool,
    pub kind: Kind,
    pub description: &'static str,
}

const fn path(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "path",
        required: true,
        kind: Kind::String,
        description,
    }
}

const fn query(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        required: false,
        kind,
        description,
    }
}

const TEMPLATE_NAME: Param = query("template_name", Kind::String, "Only this template.");
const REGION: Param = query(
    "region",
    Kind::String,
    "Only this region (default: every region, or `global` where the operation names one pin).",
);
const LIMIT: Param = query("limit", Kind::Integer, "How many to return.");

/// One route: its handler and its description.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    /// The token scope it needs; none for endpoints without authentication.
    pub scope: Option<&'static str>,
    pub params: Vec<Param>,
    pub request: Option<SchemaOf>,
    pub answers: Vec<(u16, &'static str, Body)>,
    /// Every error code it can answer, in groups.
    pub errors: &'static [&'static [Code]],
    pub handler: fn() -> MethodRouter<AppState>,
}

/// Errors any request can meet at the HTTP layer, or a bug.
const HTTP: &[Code] = &[
    Code::BadRequest,
    Code::UriTooLong,
    Code::HeadersTooLarge,
    Code::Internal,
];
/// A token was needed: missing, unknown, not enough scope, too many
/// failures.
const AUTH: &[Code] = &[
    Code::AmbiguousAuthorization,
    Code::Unauthorized,
    Code::Forbidden,
    Code::TooManyAuthFailures,
];
/// A JSON body was read.
const BODY: &[Code] = &[
    Code::MalformedJson,
    Code::BodyNotObject,
    Code::MalformedBody,
    Code::PayloadTooLarge,
    Code::UnsupportedMediaType,
    Code::InvalidRequest,
    Code::RequestTimeout,
];
/// The database was asked (a write, or a read the view does not serve).
const STORE: &[Code] = &[Code::StoreUnavailable];
/// A write was committed.
const WRITE: &[Code] = &[Code::StoreUnavailable, Code::CommitOutcomeUnknown];
/// A pin named by template and region.
const PIN: &[Code] = &[Code::InvalidTemplateName, Code::InvalidRegion];

/// Every API operation, in the order of `docs/api.md`.
pub fn operations() -> Vec<Operation> {
    use pinion_api as api;
    vec![
        Operation {
            method: "get",
            path: "/cp/runtime-image/resolve",
            id: "resolve",
            summary: "The digest a template runs in a region (its own pin, else `global`); with `instance_id`, its canary ring",
            scope: Some("read"),
            params: vec![
                Param {
                    required: true,
                    ..TEMPLATE_NAME
                },
                query(
                    "region",
                    Kind::String,
                    "The instance's region (default `global`).",
                ),
                query(
                    "instance_id",
                    Kind::String,
                    "The instance asking, for its canary ring.",
                ),
            ],
            request: None,
            answers: vec![(200, "The answer", Body::Json(schema::<api::Resolved>))],
            errors: &[
                HTTP,
                AUTH,
                PIN,
                &[
                    Code::InvalidInstanceId,
                    Code::RuntimePinMissing,
                    Code::StoreUnavailable,
                ],
            ],
            handler: || get(handlers::resolve),
        },
        Operation {
            method: "get",
            path: "/cp/admin/runtime-image",
            id: "list_pins",
            summary: "Every pin (ETag: 304 with `If-None-Match`)",
            scope: Some("read"),
            params: vec![TEMPLATE_NAME, REGION],
            request: None,
            answers: vec![
                (200, "The pins", Body::Json(schema::<api::PinList>)),
                (304, "Not modified since the ETag sent", Body::None),
            ],
            errors: &[HTTP, AUTH, PIN, STORE],
            handler: || get(handlers::list_pins),
        },
        Operation {
            method: "post",
            path: "/cp/admin/runtime-image/promote",
            id: "promote",
            summary: "Move a pin to a digest (compare-and-swap with `expected_digest` or `If-Match`)",
            scope: Some("promote"),
            params: vec![Param {
                name: "If-Match",
                location: "header",
                required: false,
                kind: Kind::String,
                description: "The pin's revision, quoted: refuse unless it is still that.",
            }],
            request: Some(schema::<api::PromoteRequest>),
            answers: vec![
                (201, "The pin moved", Body::Json(schema::<api::PinResponse>)),
                (
                    200,
                    "The pin was at that digest already",
                    Body::Json(schema::<api::PinResponse>),
                ),
            ],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                PIN,
                &[
                    Code::InvalidIfMatch,
                    Code::UnknownRegion,
                    Code::InvalidDigest,
                    Code::InvalidGitSha,
                    Code::InvalidNotes,
                    Code::InvalidExpectedDigest,
                    Code::InvalidBuildSequence,
                    Code::InvalidCiRunUrl,
                    Code::InvalidRepositoryLabel,
                    Code::InvalidWorkflow,
                    Code::UnknownTemplate,
                    Code::TemplateNotPinnable,
                    Code::ProvenanceRequired,
                    Code::DigestNotInRegistry,
                    Code::NoRepository,
                    Code::RegistryUnavailable,
                    Code::PinConflict,
                    Code::StaleBuild,
                    Code::PinHeld,
                    Code::SoakRequired,
                    Code::SoakSourceUnavailable,
                ],
            ],
            handler: || post(handlers::promote),
        },
        Operation {
            method: "post",
            path: "/cp/admin/runtime-image/rollback",
            id: "rollback",
            summary: "Move a pin back to a digest it had (and hold it, with `hold`)",
            scope: Some("promote"),
            params: vec![],
            request: Some(schema::<api::RollbackRequest>),
            answers: vec![
                (
                    201,
                    "The pin moved back",
                    Body::Json(schema::<api::PinResponse>),
                ),
                (
                    200,
                    "The pin was at that digest already",
                    Body::Json(schema::<api::PinResponse>),
                ),
            ],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                PIN,
                &[
                    Code::InvalidDigest,
                    Code::InvalidNotes,
                    Code::InvalidReason,
                    Code::RuntimePinMissing,
                    Code::NothingToRollBack,
                    Code::DigestNotInHistory,
                    Code::PinConflict,
                    Code::InvalidExpectedDigest,
                ],
            ],
            handler: || post(handlers::rollback),
        },
        Operation {
            method: "post",
            path: "/cp/admin/runtime-image/hold",
            id: "hold",
            summary: "Hold a pin: promotions are refused until it is released",
            scope: Some("promote"),
            params: vec![],
            request: Some(schema::<api::HoldRequest>),
            answers: vec![
                (201, "Held now", Body::Json(schema::<api::HoldResponse>)),
                (
                    200,
                    "Held already (the first hold stands)",
                    Body::Json(schema::<api::HoldResponse>),
                ),
            ],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                PIN,
                &[Code::InvalidReason, Code::RuntimePinMissing],
                &[Code::UnknownRegion],
            ],
            handler: || post(handlers::hold),
        },
        Operation {
            method: "delete",
            path: "/cp/admin/runtime-image/hold",
            id: "release",
            summary: "Release a pin's hold",
            scope: Some("promote"),
            params: vec![
                Param {
                    required: true,
                    ..TEMPLATE_NAME
                },
                query(
                    "region",
                    Kind::String,
                    "The pin's region (default `global`).",
                ),
            ],
            request: None,
            answers: vec![(200, "Released", Body::Json(schema::<api::HoldResponse>))],
            errors: &[HTTP, AUTH, WRITE, PIN, &[Code::HoldNotFound]],
            handler: || delete(handlers::release),
        },
        Operation {
            method: "post",
            path: "/cp/admin/runtime-image/canary",
            id: "start_canary",
            summary: "Start, replace or widen a pin's canary",
            scope: Some("promote"),
            params: vec![],
            request: Some(schema::<api::CanaryRequest>),
            answers: vec![
                (
                    201,
                    "Started or changed",
                    Body::Json(schema::<api::PinResponse>),
                ),
                (
                    200,
                    "The pin has that canary already",
                    Body::Json(schema::<api::PinResponse>),
                ),
            ],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                PIN,
                &[
                    Code::InvalidDigest,
                    Code::InvalidPercent,
                    Code::UnknownRegion,
                    Code::CanaryIsStable,
                    Code::RuntimePinMissing,
                    Code::PinHeld,
                    Code::DigestNotInRegistry,
                    Code::NoRepository,
                    Code::RegistryUnavailable,
                    Code::UnknownTemplate,
                ],
            ],
            handler: || post(handlers::start_canary),
        },
        Operation {
            method: "delete",
            path: "/cp/admin/runtime-image/canary",
            id: "abort_canary",
            summary: "Abort a pin's canary",
            scope: Some("promote"),
            params: vec![
                Param {
                    required: true,
                    ..TEMPLATE_NAME
                },
                query(
                    "region",
                    Kind::String,
                    "The pin's region (default `global`).",
                ),
            ],
            request: None,
            answers: vec![(200, "Aborted", Body::Json(schema::<api::PinResponse>))],
            errors: &[HTTP, AUTH, WRITE, PIN, &[Code::CanaryNotFound]],
            handler: || delete(handlers::abort_canary),
        },
        Operation {
            method: "get",
            path: "/cp/admin/runtime-image/history",
            id: "history",
            summary: "Who moved which pin, when, from what; newest first",
            scope: Some("read"),
            params: vec![
                TEMPLATE_NAME,
                REGION,
                query(
                    "before",
                    Kind::Integer,
                    "Only revisions below this one (the previous page's `next_before`).",
                ),
                LIMIT,
            ],
            request: None,
            answers: vec![(
                200,
                "A page of history",
                Body::Json(schema::<api::HistoryList>),
            )],
            errors: &[HTTP, AUTH, PIN, STORE, &[Code::InvalidRequest]],
            handler: || get(handlers::history),
        },
        Operation {
            method: "get",
            path: "/cp/admin/runtime-image/drift",
            id: "drift",
            summary: "Every pin against what its repository's tag points at, as the watcher last saw it",
            scope: Some("read"),
            params: vec![],
            request: None,
            answers: vec![(
                200,
                "The drift report",
                Body::Json(schema::<api::DriftReport>),
            )],
            errors: &[HTTP, AUTH],
            handler: || get(handlers::drift),
        },
        Operation {
            method: "get",
            path: "/cp/admin/runtime-image/retention",
            id: "retention",
            summary: "Every digest a registry clean-up must keep, and why",
            scope: Some("read"),
            params: vec![query(
                "history",
                Kind::Integer,
                "How many history entries per pin to keep (default 5).",
            )],
            request: None,
            answers: vec![(200, "What to keep", Body::Json(schema::<api::Retention>))],
            errors: &[HTTP, AUTH, STORE, &[Code::InvalidRequest]],
            handler: || get(handlers::retention),
        },
        Operation {
            method: "get",
            path: "/cp/runtimes",
            id: "list_runtimes",
            summary: "The template catalog",
            scope: Some("read"),
            params: vec![],
            request: None,
            answers: vec![(200, "The catalog", Body::Json(schema::<api::RuntimeList>))],
            errors: &[HTTP, AUTH],
            handler: || get(handlers::list_runtimes),
        },
        Operation {
            method: "put",
            path: "/cp/admin/runtimes/{name}",
            id: "put_runtime",
            summary: "Add or change a catalog entry",
            scope: Some("admin"),
            params: vec![path("name", "The template's name.")],
            request: Some(schema::<api::RuntimeUpdate>),
            answers: vec![
                (201, "Added", Body::Json(schema::<api::RuntimeResponse>)),
                (200, "Changed", Body::Json(schema::<api::RuntimeResponse>)),
            ],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                &[Code::InvalidTemplateName, Code::InvalidRepository],
            ],
            handler: || put(handlers::put_runtime),
        },
        Operation {
            method: "get",
            path: "/cp/admin/audit",
            id: "audit",
            summary: "Refused writes, newest first",
            scope: Some("admin"),
            params: vec![
                query(
                    "before",
                    Kind::Integer,
                    "Only entries with an id below this one.",
                ),
                LIMIT,
            ],
            request: None,
            answers: vec![(
                200,
                "A page of the audit log",
                Body::Json(schema::<api::AuditList>),
            )],
            errors: &[HTTP, AUTH, STORE, &[Code::InvalidRequest]],
            handler: || get(handlers::audit),
        },
        Operation {
            method: "get",
            path: "/cp/events",
            id: "events",
            summary: "The change feed: a page of events, or with `Accept: text/event-stream` a stream that resumes after `Last-Event-ID`",
            scope: Some("read"),
            params: vec![
                query(
                    "after",
                    Kind::Integer,
                    "Only events with a higher id (default 0).",
                ),
                LIMIT,
                TEMPLATE_NAME,
                query(
                    "type",
                    Kind::String,
                    "Only events of this type (repeatable).",
                ),
                Param {
                    name: "Last-Event-ID",
                    location: "header",
                    required: false,
                    kind: Kind::String,
                    description: "On a stream: resume after this id (wins over `after`).",
                },
            ],
            request: None,
            answers: vec![(
                200,
                "A page of events, or the stream",
                Body::Json(schema::<api::EventList>),
            )],
            errors: &[
                HTTP,
                AUTH,
                STORE,
                &[
                    Code::InvalidAfter,
                    Code::TooManyStreams,
                    Code::InvalidRequest,
                    Code::InvalidTemplateName,
                    Code::InvalidEventType,
                    Code::EventsExpired,
                ],
            ],
            handler: || get(handlers::events),
        },
        Operation {
            method: "post",
            path: "/cp/fleet/report",
            id: "report",
            summary: "What instances run (a heartbeat; all or nothing)",
            scope: Some("report"),
            params: vec![],
            request: Some(schema::<api::FleetReport>),
            answers: vec![(200, "Recorded", Body::Json(schema::<api::ReportAccepted>))],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                &[
                    Code::InvalidInstanceId,
                    Code::InvalidTemplateName,
                    Code::InvalidRegion,
                    Code::InvalidDigest,
                    Code::InvalidTtlSeconds,
                    Code::FleetFull,
                    Code::UnknownTemplate,
                ],
            ],
            handler: || post(handlers::report),
        },
        Operation {
            method: "get",
            path: "/cp/fleet",
            id: "fleet",
            summary: "Per pin: how much of its fleet runs its digest",
            scope: Some("read"),
            params: vec![TEMPLATE_NAME, REGION],
            request: None,
            answers: vec![(
                200,
                "The fleet by pin",
                Body::Json(schema::<api::FleetList>),
            )],
            errors: &[HTTP, AUTH, PIN],
            handler: || get(handlers::fleet),
        },
        Operation {
            method: "get",
            path: "/cp/fleet/instances",
            id: "instances",
            summary: "Instances, with their state against their pin",
            scope: Some("read"),
            params: vec![
                TEMPLATE_NAME,
                REGION,
                query("state", Kind::String, "`current`, `behind` or `unknown`."),
                LIMIT,
                query(
                    "after",
                    Kind::String,
                    "Only instances whose id sorts after this one.",
                ),
            ],
            request: None,
            answers: vec![(
                200,
                "A page of instances",
                Body::Json(schema::<api::InstanceList>),
            )],
            errors: &[
                HTTP,
                AUTH,
                PIN,
                &[Code::InvalidRequest, Code::InvalidInstanceId],
            ],
            handler: || get(handlers::instances),
        },
        Operation {
            method: "delete",
            path: "/cp/fleet/instances/{instance_id}",
            id: "delete_instance",
            summary: "Forget an instance",
            scope: Some("report"),
            params: vec![path("instance_id", "The instance.")],
            request: None,
            answers: vec![(204, "Forgotten", Body::None)],
            errors: &[
                HTTP,
                AUTH,
                STORE,
                &[Code::InvalidInstanceId, Code::InstanceNotFound],
            ],
            handler: || delete(handlers::delete_instance),
        },
        Operation {
            method: "post",
            path: "/cp/admin/tokens",
            id: "create_token",
            summary: "Make a token (never more than the caller's); the secret is shown once",
            scope: Some("admin"),
            params: vec![],
            request: Some(schema::<api::TokenRequest>),
            answers: vec![(201, "Made", Body::Json(schema::<api::TokenCreated>))],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                &[
                    Code::InvalidTokenName,
                    Code::InvalidScope,
                    Code::InvalidTemplateName,
                    Code::InvalidExpiresAt,
                    Code::TokenNameTaken,
                ],
            ],
            handler: || post(handlers::create_token),
        },
        Operation {
            method: "get",
            path: "/cp/admin/tokens",
            id: "list_tokens",
            summary: "Tokens the caller could have made (never secrets)",
            scope: Some("admin"),
            params: vec![],
            request: None,
            answers: vec![(200, "The tokens", Body::Json(schema::<api::TokenList>))],
            errors: &[HTTP, AUTH],
            handler: || get(handlers::list_tokens),
        },
        Operation {
            method: "delete",
            path: "/cp/admin/tokens/{name}",
            id: "revoke_token",
            summary: "Revoke a token",
            scope: Some("admin"),
            params: vec![path("name", "The token's name.")],
            request: None,
            answers: vec![(204, "Revoked", Body::None)],
            errors: &[
                HTTP,
                AUTH,
                WRITE,
                &[Code::InvalidTokenName, Code::TokenNotFound],
            ],
            handler: || delete(handlers::revoke_token),
        },
        Operation {
            method: "get",
            path: "/cp/admin/webhooks",
            id: "list_webhooks",
            summary: "Every webhook (never secrets)",
            scope: Some("admin"),
            params: vec![],
            request: None,
            answers: vec![(200, "The webhooks", Body::Json(schema::<api::WebhookList>))],
            errors: &[HTTP, AUTH, STORE],
            handler: || get(handlers::list_webhooks),
        },
        Operation {
            method: "put",
            path: "/cp/admin/webhooks/{name}",
            id: "put_webhook",
            summary: "Make or change a webhook; its secret is shown once, when made",
            scope: Some("admin"),
            params: vec![path("name", "The webhook's name.")],
            request: Some(schema::<api::WebhookRequest>),
            answers: vec![
                (201, "Made", Body::Json(schema::<api::WebhookCreated>)),
                (
                    200,
                    "Changed (the secret is kept)",
                    Body::Json(schema::<api::WebhookResponse>),
                ),
            ],
            errors: &[
                HTTP,
                AUTH,
                BODY,
                WRITE,
                &[
                    Code::InvalidWebhookName,
                    Code::InvalidWebhookUrl,
                    Code::InvalidEventType,
                    Code::InvalidTemplateName,
                    Code::SecretKeyMissing,
                ],
            ],
            handler: || put(handlers::put_webhook),
        },
        Operation {
            method: "delete",
            path: "/cp/admin/webhooks/{name}",
            id: "delete_webhook",
            summary: "Delete a webhook and its deliveries",
            scope: Some("admin"),
            params: vec![path("name", "The webhook's name.")],
            request: None,
            answers: vec![(204, "Deleted", Body::None)],
            errors: &[
                HTTP,
                AUTH,
                WRITE,
                &[Code::InvalidWebhookName, Code::WebhookNotFound],
            ],
            handler: || delete(handlers::delete_webhook),
        },
        Operation {
            method: "get",
            path: "/cp/admin/webhooks/{name}/deliveries",
            id: "deliveries",
            summary: "A webhook's deliveries, newest first",
            scope: Some("admin"),
            params: vec![path("name", "The webhook's name."), LIMIT],
            request: None,
            answers: vec![(
                200,
                "The deliveries",
                Body::Json(schema::<api::DeliveryList>),
            )],
            errors: &[
                HTTP,
                AUTH,
                STORE,
                &[
                    Code::InvalidWebhookName,
                    Code::InvalidRequest,
                    Code::WebhookNotFound,
                ],
            ],
            handler: || get(handlers::deliveries),
        },
        Operation {
            method: "post",
            path: "/cp/admin/webhooks/{name}/deliveries/{event_id}/redeliver",
            id: "redeliver",
            summary: "One more attempt of a delivery, now",
            scope: Some("admin"),
            params: vec![
                path("name", "The webhook's name."),
                path("event_id", "The event's id."),
            ],
            request: None,
            answers: vec![(202, "Queued", Body::None)],
            errors: &[
                HTTP,
                AUTH,
                WRITE,
                &[
                    Code::InvalidWebhookName,
                    Code::InvalidRequest,
                    Code::WebhookNotFound,
                    Code::DeliveryNotFound,
                    Code::WebhookDisabled,
                ],
            ],
            handler: || post(handlers::redeliver),
        },
        Operation {
            method: "get",
            path: "/metrics",
            id: "metrics",
            summary: "Prometheus metrics (a read token with `--metrics-token-required`)",
            scope: None,
            params: vec![],
            request: None,
            answers: vec![(
                200,
                "Prometheus text format",
                Body::Other("text/plain; version=0.0.4"),
            )],
            errors: &[HTTP, AUTH],
            handler: || get(handlers::metrics),
        },
        Operation {
            method: "get",
            path: "/healthz",
            id: "healthz",
            summary: "The process answers",
            scope: None,
            params: vec![],
            request: None,
            answers: vec![(200, "Alive", Body::Json(schema::<api::Health>))],
            errors: &[HTTP],
            handler: || get(handlers::healthz),
        },
        Operation {
            method: "get",
            path: "/readyz",
            id: "readyz",
            summary: "The database answers too",
            scope: None,
            params: vec![],
            request: None,
            answers: vec![(200, "Ready", Body::Json(schema::<api::Health>))],
            errors: &[HTTP, STORE],
            handler: || get(handlers::readyz),
        },
        Operation {
            method: "get",
            path: "/version",
            id: "version",
            summary: "The running build",
            scope: None,
            params: vec![],
            request: None,
            answers: vec![(
                200,
                "Version and commit",
                Body::Json(schema::<api::Version>),
            )],
            errors: &[HTTP],
            handler: || get(handlers::version),
        },
        Operation {
            method: "get",
            path: "/openapi.json",
            id: "openapi",
            summary: "This description",
            scope: None,
            params: vec![],
            request: None,
            answers: vec![(200, "OpenAPI 3.1", Body::Other("application/json"))],
            errors: &[HTTP],
            handler: || get(serve),
        },
    ]
}

/// Every operation's route.
pub fn routes() -> Router<AppState> {
    operations()
        .into_iter()
        .fold(Router::new(), |router, operation| {
            router.route(operation.path, (operation.handler)())
        })
}

/// The description, made once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| serde_json::to_string_pretty(&describe(&operations())).unwrap_or_default())
}

/// `GET /openapi.json`.
async fn serve() -> Response {
    ([(CONTENT_TYPE, "application/json")], document()).into_response()
}

fn describe(operations: &[Operation]) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let error_schema = schema::<pinion_api::ErrorBody>(&mut generator);
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for operation in operations {
        let parameters: Vec<Value> = operation
            .params
            .iter()
            .map(|param| {
                json!({
                    "name": param.name,
                    "in": param.location,
                    "required": param.required,
                    "description": param.description,
                    "schema": match (param.kind, pattern(param.name)) {
                        (Kind::String, Some(pattern)) => json!({"type": "string", "pattern": pattern}),
                        (Kind::String, None) => json!({"type": "string"}),
                        (Kind::Integer, _) => {
                            let mut schema = json!({"type": "integer"});
                            if let Some((min, max)) = bounds(param.name) {
                                schema["minimum"] = json!(min);
                                if let Some(max) = max {
                                    schema["maximum"] = json!(max);
                                }
                            }
                            schema
                        }
                    },
                })
            })
            .collect();
        let mut responses = Map::new();
        for (status, description, body) in &operation.answers {
            responses.insert(
                status.to_string(),
                answer(&mut generator, description, *body),
            );
        }
        // Error answers by status, each naming its codes.
        let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for code in operation.errors.iter().flat_map(|group| group.iter()) {
            let codes = by_status.entry(code.status().as_u16()).or_default();
            if !codes.contains(&code.as_str()) {
                codes.push(code.as_str());
            }
        }
        for (status, codes) in by_status {
            let listed: Vec<String> = codes.iter().map(|code| format!("`{code}`")).collect();
            responses.insert(
                status.to_string(),
                json!({
                    "description": format!("Refused or failed: {}", listed.join(", ")),
                    "x-pinion-codes": codes,
                    "content": {"application/json": {"schema": error_schema.clone()}},
                }),
            );
        }
        let mut entry = json!({
            "operationId": operation.id,
            "summary": operation.summary,
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(scope) = operation.scope {
            entry["security"] = json!([{"bearer": []}]);
            entry["x-pinion-scope"] = json!(scope);
        } else {
            entry["security"] = json!([]);
        }
        if let Some(request) = operation.request {
            entry["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": request(&mut generator)}},
            });
        }
        paths
            .entry(operation.path)
            .or_default()
            .insert(operation.method.to_owned(), entry);
    }
    let event_data = event_payloads(&mut generator);
    let mut schemas = generator.take_definitions(true);
    // The event's `data`, by its type: each type's payload schema.
    if let Some(event) = schemas.get_mut("Event").and_then(Value::as_object_mut) {
        event.insert("x-pinion-event-data".to_owned(), Value::Object(event_data));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Pinion control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Which exact container image, by digest, each runtime template runs in each environment and region. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// The grammar of a parameter, by its name, where the contract fixes one.
fn pattern(name: &str) -> Option<&'static str> {
    match name {
        "template_name" | "region" | "name" => Some(pinion_api::NAME_PATTERN),
        "instance_id" => Some(pinion_api::INSTANCE_ID_PATTERN),
        _ => None,
    }
}

/// The range of an integer parameter, by its name, as the handlers take
/// it (`Query::number`: `limit` 1 to 1000 everywhere, `history` 1 to 100).
fn bounds(name: &str) -> Option<(i64, Option<i64>)> {
    match name {
        "limit" => Some((1, Some(1000))),
        "history" => Some((1, Some(100))),
        "before" => Some((1, None)),
        "after" => Some((0, None)),
        _ => None,
    }
}

/// Every event type's payload schema (a reference into the components),
/// by the type's name.
fn event_payloads(generator: &mut SchemaGenerator) -> Map<String, Value> {
    use pinion_api::events as payload;
    let mut map = Map::new();
    for kind in pinion_core::EventType::ALL {
        let schema = match payload::schema_name(kind.as_str()) {
            Some("PinMoved") => schema::<payload::PinMoved>(generator),
            Some("RuntimeChanged") => schema::<payload::RuntimeChanged>(generator),
            Some("PinDrift") => schema::<payload::PinDrift>(generator),
            Some("WebhookDisabled") => schema::<payload::WebhookDisabled>(generator),
            Some("FleetState") => schema::<payload::FleetState>(generator),
            Some("PinHeld") => schema::<payload::PinHeld>(generator),
            Some("PinReleased") => schema::<payload::PinReleased>(generator),
            Some("CanaryStarted") => schema::<payload::CanaryStarted>(generator),
            Some("CanaryAborted") => schema::<payload::CanaryAborted>(generator),
            Some("CanaryPromoted") => schema::<payload::CanaryPromoted>(generator),
            Some("TokenCreatedEvent") => schema::<payload::TokenCreated>(generator),
            Some("TokenRevoked") => schema::<payload::TokenRevoked>(generator),
            // A type without a payload has no entry: the test below says so.
            _ => continue,
        };
        map.insert(kind.as_str().to_owned(), schema.to_value());
    }
    map
}

fn answer(generator: &mut SchemaGenerator, description: &str, body: Body) -> Value {
    match body {
        Body::None => json!({"description": description}),
        Body::Json(schema) => json!({
            "description": description,
            "content": {"application/json": {"schema": schema(generator)}},
        }),
        Body::Other(media) => json!({
            "description": description,
            "content": {media: {"schema": {"type": "string"}}},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn snapshot_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
    }

    /// The committed description is the one the code makes; `cargo xtask
    /// openapi` writes it again after a change.
    #[test]
    fn the_committed_description_is_the_generated_one() {
        let committed = std::fs::read_to_string(snapshot_path()).unwrap_or_default();
        assert!(
            committed.trim_end() == document().trim_end(),
            "docs/openapi.json differs from what the code describes: run `cargo xtask openapi` and commit it"
        );
    }

    /// Every route the description names is routed to its handler (not the
    /// fallback's 404, not a 405), and every routed API path is described:
    /// both come from the same table, so this checks the table's handlers
    /// are wired under the paths and methods it says.
    #[tokio::test]
    async fn every_described_operation_is_routed() {
        let dir = tempfile::tempdir().unwrap();
        let database = pinion_store::DatabaseUrl::Sqlite(dir.path().join("p.db"));
        let state =
            tokio::task::spawn_blocking(move || AppState::open(crate::Settings::new(database)))
                .await
                .unwrap()
                .unwrap();
        let router = crate::router(state);
        let document: Value = serde_json::from_str(document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        let mut checked = 0;
        for (path, methods) in paths {
            for method in methods.as_object().unwrap().keys() {
                let concrete = path
                    .replace("{name}", "x")
                    .replace("{instance_id}", "x")
                    .replace("{event_id}", "1");
                let request = axum::http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&concrete)
                    .body(axum::body::Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&body);
                assert!(
                    status != 405 && !text.contains("no such endpoint"),
                    "{method} {path} is described but not routed: {status} {text}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, operations().len(), "one description per operation");
        // And something not described is not routed.
        let request = axum::http::Request::get("/cp/admin/not-described")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 404);
    }

    /// Every reference resolves, and every error answer names real codes.
    #[test]
    fn every_event_type_has_its_payload_described_and_documented() {
        let document: Value = serde_json::from_str(document()).unwrap();
        let described = &document["components"]["schemas"]["Event"]["x-pinion-event-data"];
        let api_md = include_str!("../../../docs/api.md");
        for kind in pinion_core::EventType::ALL {
            let name = pinion_api::events::schema_name(kind.as_str())
                .unwrap_or_else(|| panic!("`{}` has no payload type", kind.as_str()));
            assert_eq!(
                described[kind.as_str()]["$ref"],
                format!("#/components/schemas/{name}"),
                "`{}` in /openapi.json",
                kind.as_str()
            );
            assert!(
                api_md
                    .lines()
                    .any(|line| line.starts_with('|')
                        && line.contains(&format!("`{}`", kind.as_str()))),
                "`{}` has no row in docs/api.md",
                kind.as_str()
            );
        }
    }

    #[test]
    fn references_resolve_and_codes_are_real() {
        let document: Value = serde_json::from_str(document()).unwrap();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        fn walk(value: &Value, refs: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        refs.push(target.clone());
                    }
                    map.values().for_each(|value| walk(value, refs));
                }
                Value::Array(items) => items.iter().for_each(|value| walk(value, refs)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&document, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a reference outside the components: {target}"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
        // Every code the document lists is one the server has, with the
        // status it is listed under (read from the document, not the table
        // it was made from).
        let mut listed = 0;
        for (path, methods) in document["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                for (status, answer) in operation["responses"].as_object().unwrap() {
                    let Some(codes) = answer.get("x-pinion-codes") else {
                        continue;
                    };
                    for code in codes.as_array().unwrap() {
                        let code = code.as_str().unwrap();
                        let known = Code::ALL
                            .iter()
                            .find(|known| known.as_str() == code)
                            .unwrap_or_else(|| panic!("{method} {path}: `{code}` is no code"));
                        assert_eq!(
                            known.status().as_str(),
                            status,
                            "{method} {path}: `{code}` listed under the wrong status"
                        );
                        listed += 1;
                    }
                }
            }
        }
        assert!(listed > 100, "only {listed} codes listed");
    }
}
