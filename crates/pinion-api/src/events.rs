//! The `data` of each event type, as the change feed, the streams and the
//! webhooks carry it. The store writes these (inside the transaction of the
//! change, where the revision is known), `pinion watch` reads them, and
//! `/openapi.json` describes them. Every event type of `pinion-core` has
//! one here ([`schema_name`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `pin.promoted` and `pin.rolled_back`: a pin moved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinMoved {
    /// Null when the pin was created.
    pub from_digest: Option<String>,
    pub to_digest: String,
    /// Null when the template has no repository.
    pub image_ref: Option<String>,
    /// The pin's revision after the move.
    pub revision: i64,
    /// The token that moved it.
    pub actor: String,
    pub git_sha: Option<String>,
    pub notes: Option<String>,
    pub ci_run_url: Option<String>,
    pub build_sequence: Option<i64>,
    /// A guard would have refused it, and `force` overrode it.
    pub forced: bool,
}

/// `runtime.changed`: a catalog entry was added or changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct RuntimeChanged {
    /// The repository; null when the entry has none.
    pub image: Option<String>,
    pub pinnable: bool,
    /// The entry is new.
    pub created: bool,
}

/// `pin.stale` and `pin.fresh`: the drift watcher's flips.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinDrift {
    pub image_digest: String,
    /// The tag compared with.
    pub tag: String,
    /// What the tag points at.
    pub tag_digest: String,
    /// When the pin was first seen behind the tag; null once fresh.
    pub stale_since: Option<String>,
}

/// `fleet.converged` and `fleet.stalled`: a pin's fleet entered that state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct FleetState {
    pub image_digest: String,
    pub revision: i64,
    pub current: u64,
    pub behind: u64,
    pub unknown: u64,
}

/// `pin.held`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinHeld {
    pub image_digest: String,
    pub revision: i64,
    pub actor: String,
    pub reason: String,
}

/// `pin.released`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinReleased {
    pub image_digest: String,
    pub revision: i64,
    pub actor: String,
    /// The hold's reason.
    pub reason: String,
    /// Who held it.
    pub held_by: String,
}

/// `canary.started`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct CanaryStarted {
    pub image_digest: String,
    pub percent: u8,
    pub stable_digest: String,
    pub revision: i64,
    pub actor: String,
    pub forced: bool,
    /// The canary this one took the place of.
    pub replaced: Option<ReplacedCanary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct ReplacedCanary {
    pub image_digest: String,
    pub percent: u8,
}

/// `canary.aborted`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct CanaryAborted {
    pub image_digest: String,
    pub percent: u8,
    /// The pin's digest after the abort.
    pub stable_digest: String,
    pub started_at: String,
    pub started_by: String,
    pub actor: String,
    /// `requested`, `health` (the health rule), or `superseded` (the pin
    /// moved to another digest).
    pub cause: String,
    /// The figures the health rule judged by (`health` only).
    pub health: Option<CanaryHealthFigures>,
    /// The pin was held by this abort.
    pub held: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct CanaryHealthFigures {
    pub canary_instances: u64,
    pub canary_unhealthy: u64,
    pub canary_unhealthy_percent: f64,
    pub stable_instances: u64,
    pub stable_unhealthy: u64,
    pub stable_unhealthy_percent: f64,
    pub excess_percent: f64,
    pub max_unhealthy_percent: f64,
    pub min_reports: u64,
}

/// `canary.promoted`: the pin moved to its canary's digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct CanaryPromoted {
    pub image_digest: String,
    pub percent: u8,
    pub started_at: String,
    pub started_by: String,
    pub revision: i64,
    pub actor: String,
}

/// `token.created` (over HTTP). Named `TokenCreatedEvent` in the
/// description, beside the answer that creates a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[schemars(rename = "TokenCreatedEvent")]
pub struct TokenCreated {
    pub name: String,
    pub scope: String,
    /// Null: every template.
    pub templates: Option<Vec<String>>,
    pub expires_at: Option<String>,
    pub actor: String,
}

/// `token.revoked` (over HTTP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct TokenRevoked {
    pub name: String,
    pub actor: String,
}

/// `webhook.disabled`: a receiver answered `410`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct WebhookDisabled {
    pub webhook: String,
    pub reason: String,
    /// The event whose delivery was answered `410`.
    pub event_id: i64,
}

/// The name of the schema of an event type's `data` (as in
/// `/openapi.json`'s components), by the type's name; `None` for a type
/// this crate does not know.
pub fn schema_name(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "pin.promoted" | "pin.rolled_back" => "PinMoved",
        "runtime.changed" => "RuntimeChanged",
        "pin.stale" | "pin.fresh" => "PinDrift",
        "webhook.disabled" => "WebhookDisabled",
        "fleet.converged" | "fleet.stalled" => "FleetState",
        "pin.held" => "PinHeld",
        "pin.released" => "PinReleased",
        "canary.started" => "CanaryStarted",
        "canary.aborted" => "CanaryAborted",
        "canary.promoted" => "CanaryPromoted",
        "token.created" => "TokenCreatedEvent",
        "token.revoked" => "TokenRevoked",
        _ => return None,
    })
}
