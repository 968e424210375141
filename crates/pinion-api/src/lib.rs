//! The JSON bodies of Pinion's HTTP contract (`shared/CONTRACT.md`), shared by
//! the server that writes them and the client that reads them.
//!
//! These are wire shapes, not domain values: strings stay strings here, and
//! the edge parses them into `pinion-core` types. Response types ignore
//! unknown fields, so a client keeps working when the server adds some.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod events;
pub mod status;

/// The contract's grammar of template and region names (and token and
/// webhook names), as the description's patterns.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// An OCI manifest digest.
pub const DIGEST_PATTERN: &str = "^sha256:[0-9a-f]{64}$";
/// A commit: 4 to 64 hex digits.
pub const GIT_SHA_PATTERN: &str = "^[0-9a-fA-F]{4,64}$";
/// A fleet instance's id.
pub const INSTANCE_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// `POST /cp/admin/runtime-image/promote`. Unknown fields are refused: a typo
/// in an optional field must not be silently dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub template_name: String,
    #[schemars(pattern(crate::DIGEST_PATTERN))]
    pub image_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::GIT_SHA_PATTERN))]
    pub git_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub region: Option<String>,
    /// Compare-and-swap: refuse with 409 `pin_conflict` unless the pin is at
    /// this digest now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::DIGEST_PATTERN))]
    pub expected_digest: Option<String>,
    /// A CI run number or similar; a promotion older than the pin's newest is
    /// refused with 409 `stale_build` unless `force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sequence: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// CI provenance, kept in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Keep the pin's canary standing when the pin moves to a digest other
    /// than the canary's (by default such a move ends the canary:
    /// `canary.aborted` with cause `superseded`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_canary: bool,
}

/// `POST /cp/admin/runtime-image/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub template_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub region: Option<String>,
    /// Default: the digest the pin had before its current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::DIGEST_PATTERN))]
    pub to_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Hold the pin in the same transaction: CI cannot promote the build
    /// just rolled back away from until the hold is released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// Why it is held (with `hold`); default: the notes, else a line naming
    /// the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Compare-and-swap: refuse with 409 `pin_conflict` unless the pin is at
    /// this digest now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::DIGEST_PATTERN))]
    pub expected_digest: Option<String>,
    /// Keep the pin's canary standing (see the promote request's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_canary: bool,
}

/// `POST /cp/admin/runtime-image/hold`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub template_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub region: Option<String>,
    pub reason: String,
}

/// A pin's hold: promotions to it are refused until it is released.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Hold {
    pub template_name: String,
    pub region: String,
    pub reason: String,
    /// The name of the token that held it.
    pub held_by: String,
    pub held_at: String,
}

/// The answer of a hold or a release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct HoldResponse {
    pub hold: Hold,
}

/// One entry of `GET /cp/admin/runtime-image/history`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct HistoryEntry {
    pub revision: i64,
    pub template_name: String,
    pub region: String,
    pub from_digest: Option<String>,
    pub to_digest: String,
    pub git_sha: Option<String>,
    pub notes: Option<String>,
    pub actor: String,
    /// `promote` or `rollback`.
    pub action: String,
    pub at: String,
    pub ci_run_url: Option<String>,
    pub repository: Option<String>,
    pub workflow: Option<String>,
    pub build_sequence: Option<i64>,
    /// A guard (a hold, the build order, the soak) would have refused this
    /// change, and `force` overrode it.
    #[serde(default)]
    pub forced: bool,
    /// The soak the promotion was judged by, with a soak source configured.
    #[serde(default)]
    pub soak: Option<SoakFigures>,
}

/// How long a promoted digest had soaked on the source environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct SoakFigures {
    pub source: String,
    pub soaked_seconds: u64,
    pub required_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct HistoryList {
    pub history: Vec<HistoryEntry>,
    /// Pass as `before` to get the next page; null on the last page.
    #[serde(default)]
    pub next_before: Option<i64>,
}

/// One refused write in `GET /cp/admin/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: Option<String>,
    pub template_name: Option<String>,
    pub region: Option<String>,
    pub action: String,
    pub status: u16,
    pub code: String,
    /// The peer address, for refusals without a valid token.
    #[serde(default)]
    pub source: Option<String>,
    /// How many refusals this entry stands for: failed authentications from
    /// one source are counted together, once a minute.
    #[serde(default = "one")]
    pub count: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct AuditList {
    pub audit: Vec<AuditEntry>,
    #[serde(default)]
    pub next_before: Option<i64>,
}

/// A pin as every response shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Pin {
    pub template_name: String,
    pub region: String,
    pub image_digest: String,
    /// `<repository>@<digest>`; null when the template has no repository.
    pub image_ref: Option<String>,
    pub git_sha: Option<String>,
    pub notes: Option<String>,
    /// RFC 3339, UTC, set by the server.
    pub promoted_at: String,
    /// The name of the token that moved the pin, never its secret.
    pub promoted_by: String,
    /// The history revision of the pin's last change (its ETag on promote).
    #[serde(default)]
    pub revision: i64,
    /// The newest build sequence that promoted this pin.
    #[serde(default)]
    pub build_sequence: Option<i64>,
    /// Set while the pin is held.
    #[serde(default)]
    pub hold: Option<Hold>,
    /// Set while the pin has a canary.
    #[serde(default)]
    pub canary: Option<PinCanary>,
    /// The CI run of the change that put the pin where it is, when it said.
    #[serde(default)]
    pub ci_run_url: Option<String>,
}

/// A pin's canary: a second digest the instances of a share of buckets get.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinCanary {
    pub image_digest: String,
    /// `<repository>@<digest>`; null when the template has no repository.
    #[serde(default)]
    pub image_ref: Option<String>,
    pub percent: u8,
    pub started_at: String,
    /// The name of the token that started it.
    #[serde(default)]
    pub started_by: String,
}

/// `POST /cp/admin/runtime-image/canary`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryRequest {
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub template_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub region: Option<String>,
    #[schemars(pattern(crate::DIGEST_PATTERN))]
    pub image_digest: String,
    pub percent: i64,
    /// With an `admin` token: start it on a held pin.
    #[serde(default)]
    pub force: bool,
}

/// The body of a promote response (`201` moved, `200` already there).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinResponse {
    pub pin: Pin,
    /// This promotion created the first pin of its region (only said when
    /// the server has no `--regions` list to check regions against).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_region: bool,
}

/// `GET /cp/admin/runtime-image`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct PinList {
    pub pins: Vec<Pin>,
}

/// `GET /cp/runtime-image/resolve`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Resolved {
    pub template_name: String,
    /// The region that was asked for.
    pub region: String,
    /// The region whose pin answered: the one asked for, or `global`.
    pub matched_region: String,
    pub image_digest: String,
    pub image_ref: Option<String>,
    /// `canary` when the instance named by `instance_id` is in the pin's
    /// canary ring, else `stable`.
    #[serde(default)]
    pub ring: Option<String>,
}

/// One entry of the template catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Runtime {
    pub name: String,
    /// The repository images of this template are pushed to.
    pub image: Option<String>,
    pub pinnable: bool,
}

/// `GET /cp/runtimes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct RuntimeList {
    pub runtimes: Vec<Runtime>,
}

/// `PUT /cp/admin/runtimes/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct RuntimeResponse {
    pub runtime: Runtime,
}

/// `PUT /cp/admin/runtimes/{name}`. `pinnable` defaults to true.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeUpdate {
    pub image: Option<String>,
    #[serde(default = "default_pinnable")]
    pub pinnable: bool,
}

fn default_pinnable() -> bool {
    true
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// On 409 `pin_conflict` and `stale_build`: the pin as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct ErrorDetail {
    /// Stable snake_case; clients branch on this.
    pub code: String,
    /// One line for humans.
    pub message: String,
}

/// `GET /cp/admin/runtime-image/drift`: the drift watcher's latest report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct DriftReport {
    /// When the last check finished (RFC 3339); null before the first.
    pub checked_at: Option<String>,
    /// The tag every pin is compared with.
    pub tag: String,
    pub pins: Vec<DriftEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct DriftEntry {
    pub template_name: String,
    pub region: String,
    /// The pinned digest; null for `unpinned`.
    pub image_digest: Option<String>,
    /// What the tag points at now; null when missing or unknown.
    pub tag_digest: Option<String>,
    /// `current`, `stale`, `tag_missing`, `unpinned`, or `error`.
    pub status: String,
    /// When the pin was first seen behind this tag digest.
    #[serde(default)]
    pub stale_since: Option<String>,
    /// Seconds since `stale_since`.
    #[serde(default)]
    pub behind_seconds: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Health {
    pub status: String,
}

/// One event of the change feed (`GET /cp/events`, the SSE stream and
/// webhook bodies all carry this shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct Event {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    pub template_name: Option<String>,
    pub region: Option<String>,
    pub data: serde_json::Value,
}

/// `GET /cp/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct EventList {
    pub events: Vec<Event>,
    /// The id of the last event returned, or `after` when none was.
    pub next_after: i64,
    /// The newest event id.
    pub head: i64,
}

/// `PUT /cp/admin/webhooks/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    pub url: String,
    /// Event types; absent for every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Templates; absent for every template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
}

/// A webhook as answers show it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    /// Null: every type.
    pub events: Option<Vec<String>>,
    /// Null: every template.
    pub templates: Option<Vec<String>>,
    pub created_at: String,
    /// Set when a receiver's `410 Gone` disabled it; a PUT enables it again.
    #[serde(default)]
    pub disabled_at: Option<String>,
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

/// `201` to a webhook PUT that created it: the only answer with its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct WebhookCreated {
    pub webhook: Webhook,
    /// `whsec_` and the base64 of 32 random bytes.
    pub secret: String,
}

/// `200` to a webhook PUT that changed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct WebhookResponse {
    pub webhook: Webhook,
}

/// `GET /cp/admin/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Delivery {
    pub event_id: i64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
}

/// `GET /cp/admin/webhooks/{name}/deliveries`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// `POST /cp/fleet/report`: a heartbeat of up to 10,000 instances.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetReport {
    pub instances: Vec<InstanceReport>,
    /// 5..86400; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// One instance of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    #[schemars(pattern(crate::INSTANCE_ID_PATTERN))]
    pub instance_id: String,
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub template_name: String,
    #[schemars(pattern(crate::NAME_PATTERN))]
    pub region: String,
    #[schemars(pattern(crate::DIGEST_PATTERN))]
    pub image_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// The answer to a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct ReportAccepted {
    pub accepted: usize,
}

/// `GET /cp/fleet`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct FleetList {
    pub fleet: Vec<FleetEntry>,
}

/// The fleet one pin governs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct FleetEntry {
    pub template_name: String,
    /// The governing pin's region.
    pub region: String,
    /// The pin's digest.
    pub image_digest: String,
    pub current: u64,
    pub behind: u64,
    pub unknown: u64,
    /// True when `behind` is 0 and `current` at least 1.
    pub converged: bool,
    /// When the instance behind the longest began to be behind this pin.
    pub behind_since: Option<String>,
    /// `converged`, `converging`, `stalled` or `empty`.
    pub state: String,
    /// Live instances that said whether they are healthy.
    #[serde(default)]
    pub reported_health: u64,
    /// Live instances that said they are not healthy.
    #[serde(default)]
    pub unhealthy: u64,
    /// The digests live instances run.
    pub digests: Vec<RunningDigest>,
    /// The pin's canary and what its health rule says, while it has one.
    #[serde(default)]
    pub canary: Option<FleetCanary>,
    /// The pin's revision: a moved pin starts its convergence afresh.
    #[serde(default)]
    pub revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct RunningDigest {
    pub image_digest: String,
    pub instances: u64,
}

/// `GET /cp/fleet/instances`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
    /// Pass as `after` for the next page; null on the last.
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Instance {
    pub instance_id: String,
    pub template_name: String,
    /// The instance's own region.
    pub region: String,
    pub image_digest: String,
    /// `current`, `behind` or `unknown`, against its governing pin.
    pub state: String,
    pub healthy: Option<bool>,
    pub first_seen: String,
    pub last_seen: String,
    /// The region of the pin that governs it (its own, or `global`).
    #[serde(default)]
    pub governing_region: String,
    /// When it began to run its digest.
    #[serde(default)]
    pub digest_since: Option<String>,
    /// Since when the instance has been in its `state`: for `current` and
    /// `behind`, since it began to run its digest or its pin moved, the
    /// later; for `unknown`, since its time to live ran out.
    #[serde(default)]
    pub state_since: Option<String>,
}

/// `GET /cp/admin/runtime-image/retention`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Retention {
    pub retain: Vec<Retained>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Retained {
    pub repository: String,
    pub image_digest: String,
    pub image_ref: String,
    /// Why: `pinned`, `canary`, `running`, `history`.
    pub reasons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promote_request_takes_the_existing_pipeline_shape() {
        let body = r#"{"template_name":"codex","image_digest":"sha256:x","git_sha":"abc1234","notes":"auto-promote via publish-image.yml"}"#;
        let request: PromoteRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.template_name, "codex");
        assert_eq!(request.region, None);
        assert_eq!(request.git_sha.as_deref(), Some("abc1234"));
    }

    #[test]
    fn promote_request_refuses_unknown_fields() {
        let body = r#"{"template_name":"codex","image_digest":"sha256:x","regoin":"eu"}"#;
        assert!(serde_json::from_str::<PromoteRequest>(body).is_err());
    }

    #[test]
    fn responses_tolerate_added_fields() {
        let body = r#"{"pin":{"template_name":"codex","region":"global","image_digest":"d","image_ref":null,"git_sha":null,"notes":null,"promoted_at":"t","promoted_by":"ci","revision":7}}"#;
        let response: PinResponse = serde_json::from_str(body).unwrap();
        assert_eq!(response.pin.promoted_by, "ci");
    }
}

/// A canary's fleet, in `GET /cp/fleet`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct FleetCanary {
    pub image_digest: String,
    pub percent: u8,
    /// Live instances running the canary's digest, and how many of them
    /// report `"healthy": false`.
    pub instances: u64,
    pub unhealthy: u64,
    /// Live instances running the pin's digest, and the unhealthy among them.
    pub stable_instances: u64,
    pub stable_unhealthy: u64,
    /// `unchecked` (no health rule), `insufficient_reports` (too few canary
    /// instances to decide: nothing is done), `healthy` or `unhealthy`.
    pub health: String,
    /// The fewest canary instances the rule decides on (null: no rule).
    pub min_reports: Option<u64>,
    /// How far the canary's unhealthy share may exceed the stable one's
    /// (null: no rule).
    pub max_unhealthy_percent: Option<f64>,
}

/// `GET /version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Version {
    pub version: String,
    /// The commit the build came from; null outside a git checkout.
    pub git_sha: Option<String>,
}

/// `POST /cp/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub scope: String,
    /// Only these templates; left out: every template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
    /// RFC 3339; left out: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A token as the API shows it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct TokenInfo {
    pub name: String,
    pub scope: String,
    pub templates: Option<Vec<String>>,
    pub created_at: String,
    /// The token that made it over HTTP; null for one made on the database.
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    /// Past its `expires_at`: it no longer works.
    pub expired: bool,
}

/// The answer to `POST /cp/admin/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct TokenCreated {
    pub token: TokenInfo,
    pub secret: String,
}

/// `GET /cp/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}
