//! The rows the store reads and writes, as domain values.

use pinion_core::{
    Convergence, Digest, EventType, Expectation, FleetCounts, GitSha, HoldReason, InstanceId,
    Label, NextStep, Notes, Percent, Region, Repository, RunUrl, Scope, Soak, TemplateName,
    TokenName, WebhookName, WebhookUrl,
};
use std::time::Duration;

use time::OffsetDateTime;

use crate::sql::Decode;

/// A pin: which digest a template runs in a region, and who put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRecord {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub git_sha: Option<GitSha>,
    pub notes: Option<Notes>,
    pub promoted_at: OffsetDateTime,
    pub promoted_by: TokenName,
    /// The history revision of the pin's last change; its ETag.
    pub revision: i64,
    /// The highest build sequence that has promoted this pin, if any sent one.
    pub build_sequence: Option<i64>,
    /// The pin's hold: promotions to it are refused until it is released.
    /// Boxed: most pins have none.
    pub hold: Option<Box<Hold>>,
    /// The pin's canary: a second digest a share of its instances get.
    /// Boxed: most pins have none.
    pub canary: Option<Box<Canary>>,
    /// The CI run of the change that put the pin where it is, if it said.
    pub ci_run_url: Option<RunUrl>,
}

/// A pin's canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub digest: Digest,
    pub percent: Percent,
    pub started_at: OffsetDateTime,
    pub started_by: TokenName,
}

/// A request to start, replace or widen a pin's canary.
#[derive(Debug, Clone)]
pub struct CanaryRequest {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub percent: Percent,
    pub actor: TokenName,
    pub at: OffsetDateTime,
    pub force: bool,
    /// Scope `admin`: may force past a hold.
    pub may_override_hold: bool,
}

/// What a canary request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryOutcome {
    /// The canary runs now (`replaced`: the one it took the place of).
    Started {
        pin: PinRecord,
        replaced: Option<Box<Canary>>,
    },
    /// The pin has this canary at this share already; nothing was written.
    Unchanged { pin: PinRecord },
    /// There is no pin.
    NoPin,
    /// The pin is held; nothing was written.
    Held { pin: PinRecord },
    /// The digest is the pin's own; nothing was written.
    IsStable { pin: PinRecord },
}

/// Why a canary was aborted, for its event.
#[derive(Debug, Clone, PartialEq)]
pub enum AbortCause {
    /// `DELETE /cp/admin/runtime-image/canary`.
    Requested,
    /// The health rule: the canary's unhealthy share exceeded the stable
    /// ring's by more than allowed.
    Health(CanaryFigures),
}

/// The figures the health rule decided on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryFigures {
    pub canary: pinion_core::HealthCounts,
    pub stable: pinion_core::HealthCounts,
    pub rule: pinion_core::HealthRule,
    pub excess: f64,
}

/// A request to abort a pin's canary.
#[derive(Debug, Clone)]
pub struct CanaryAbort {
    pub template: TemplateName,
    pub region: Region,
    /// Only a canary of this digest (so that a decision made on one canary
    /// never aborts the next); any canary when `None`.
    pub digest: Option<Digest>,
    pub actor: TokenName,
    pub at: OffsetDateTime,
    pub cause: AbortCause,
    /// Hold the pin too (the health rule does), unless it is held already.
    pub hold: Option<HoldReason>,
}

/// What an abort did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "the answer of one write, moved once and never kept in bulk"
)]
pub enum AbortOutcome {
    /// The canary is gone; `canary` is what it was.
    Aborted { pin: PinRecord, canary: Box<Canary> },
    /// The pin has no such canary (or there is no pin).
    NoCanary,
}

/// Why and by whom a pin is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub reason: HoldReason,
    pub held_by: TokenName,
    pub held_at: OffsetDateTime,
}

/// A catalog entry: where a template's images live, and whether it takes pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRecord {
    pub name: TemplateName,
    pub repository: Option<Repository>,
    pub pinnable: bool,
}

/// A page session as stored: the SHA-256 of its id and of the token it was
/// made from, never either secret; times in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: [u8; 32],
    pub token_hash: [u8; 32],
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: TokenName,
    pub scope: Scope,
    /// `None`: every template. `Some`: only these.
    pub templates: Option<Vec<TemplateName>>,
    pub secret_hash: [u8; 32],
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// The token that made it over HTTP (none: made on the database).
    pub created_by: Option<TokenName>,
    /// When it stops working, if ever.
    pub expires_at: Option<OffsetDateTime>,
}

impl TokenRecord {
    /// Whether it works at `now`: not revoked, not expired.
    pub fn is_active_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| now < expires)
    }
}

/// What `create_token` stores.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: TokenName,
    pub scope: Scope,
    pub templates: Option<Vec<TemplateName>>,
    pub secret_hash: [u8; 32],
    pub created_at: OffsetDateTime,
    pub created_by: Option<TokenName>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Where a promotion came from, when the CI said so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CiProvenance {
    pub run_url: Option<RunUrl>,
    pub repository: Option<Label>,
    pub workflow: Option<Label>,
}

/// A request to move a pin, already validated and authorised.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub git_sha: Option<GitSha>,
    pub notes: Option<Notes>,
    pub ci: CiProvenance,
    pub actor: TokenName,
    pub at: OffsetDateTime,
    pub expect: Expectation,
    /// A CI run number or similar; lower than the pin's is refused.
    pub build_sequence: Option<i64>,
    /// Overrides the build-sequence guard, and the hold when
    /// `may_override_hold` (never the expectation).
    pub force: bool,
    /// The caller has scope `admin`: `force` may override a hold or the
    /// soak.
    pub may_override_hold: bool,
    /// What the soak rule found, and on which source.
    pub soak: Soak,
    pub soak_source: Option<Label>,
    /// Keep the pin's canary when moving to another digest than its (by
    /// default the move ends it, cause `superseded`).
    pub keep_canary: bool,
}

/// What a promotion did. Refusals are values: they are expected answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromoteOutcome {
    /// The pin was created or moved; `previous` is the digest it left.
    Moved {
        pin: PinRecord,
        previous: Option<Digest>,
    },
    /// The pin already pointed at that digest; nothing was written.
    Unchanged { pin: PinRecord },
    /// The template is not in the catalog.
    UnknownTemplate,
    /// The template is in the catalog but marked not pinnable.
    NotPinnable,
    /// The pin is not where the caller expected it; nothing was written.
    Conflict { current: Option<PinRecord> },
    /// The pin was last moved by a newer build; nothing was written.
    StaleBuild { current: PinRecord },
    /// The pin is held; nothing was written.
    Held { current: PinRecord },
    /// The digest has not soaked long enough on the source; nothing was
    /// written.
    SoakRequired {
        soaked: Duration,
        required: Duration,
    },
}

/// A request to move a pin back.
#[derive(Debug, Clone)]
pub struct Rollback {
    pub template: TemplateName,
    pub region: Region,
    /// Where to go; `None` means the digest the pin had before its current one.
    pub to: Option<Digest>,
    pub actor: TokenName,
    pub at: OffsetDateTime,
    pub notes: Option<Notes>,
    /// Hold the pin, in the same transaction, for this reason.
    pub hold: Option<HoldReason>,
    /// Compare-and-swap: only if the pin is at this digest now.
    pub expected: Option<Digest>,
    /// Keep the pin's canary (see [`Promotion::keep_canary`]).
    pub keep_canary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    Moved {
        pin: PinRecord,
        previous: Digest,
    },
    /// The pin is already at the target; nothing was written.
    Unchanged {
        pin: PinRecord,
    },
    /// There is no pin to roll back.
    NoPin,
    /// The pin's history has no earlier digest.
    NoPrevious,
    /// `to` was never this pin's digest; a rollback only returns to one that was.
    NotInHistory,
    /// The pin is not at the expected digest; nothing was written.
    Conflict {
        current: PinRecord,
    },
}

/// A request to hold a pin.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub template: TemplateName,
    pub region: Region,
    pub reason: HoldReason,
    pub actor: TokenName,
    pub at: OffsetDateTime,
}

/// What a hold did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The pin is held now.
    Held { pin: PinRecord },
    /// It was held already; the hold it has is kept.
    AlreadyHeld { pin: PinRecord },
    /// There is no pin to hold.
    NoPin,
}

/// A request to release a pin's hold.
#[derive(Debug, Clone)]
pub struct Release {
    pub template: TemplateName,
    pub region: Region,
    pub actor: TokenName,
    pub at: OffsetDateTime,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "the answer of one write, moved once and never kept in bulk"
)]
pub enum ReleaseOutcome {
    /// The hold is gone; `hold` is what it was.
    Released { pin: PinRecord, hold: Box<Hold> },
    /// The pin is not held (or there is no pin).
    NotHeld,
}

/// What a history entry records: a move (`promote`, `rollback`), or a
/// hold taken or released (the pin stays where it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Rollback,
    Hold,
    Release,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }
}

impl Decode for Action {
    fn decode(value: &crate::sql::Value) -> Result<Self, String> {
        match String::decode(value)?.as_str() {
            "promote" => Ok(Action::Promote),
            "rollback" => Ok(Action::Rollback),
            "hold" => Ok(Action::Hold),
            "release" => Ok(Action::Release),
            other => Err(format!("unknown action `{other}`")),
        }
    }
}

/// One change of one pin. Appended in the same transaction as the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// One counter for the whole store, strictly increasing.
    pub revision: i64,
    pub template: TemplateName,
    pub region: Region,
    pub from_digest: Option<Digest>,
    pub to_digest: Digest,
    pub git_sha: Option<GitSha>,
    pub notes: Option<Notes>,
    pub actor: TokenName,
    pub action: Action,
    pub at: OffsetDateTime,
    pub ci: CiProvenance,
    pub build_sequence: Option<i64>,
    /// A guard (a hold, the build order, the soak) would have refused this
    /// change and `force` overrode it.
    pub forced: bool,
    /// The soak the promotion was judged by, when a source is configured.
    pub soak: Option<SoakFigures>,
}

/// The soak a promotion was judged by: the source asked, how long the
/// digest had soaked there, and how long it had to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakFigures {
    pub source: Label,
    pub soaked: Duration,
    pub required: Duration,
}

/// Which history to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub template: Option<TemplateName>,
    pub region: Option<Region>,
    /// Only entries with a revision below this one (pagination).
    pub before: Option<i64>,
    pub limit: usize,
    /// Only these templates' entries (a template-restricted token's view).
    pub templates: Option<Vec<TemplateName>>,
}

/// Which audit entries to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries with an id below this one (pagination).
    pub before: Option<i64>,
    pub limit: usize,
    /// Only entries about these templates (a template-restricted token's
    /// view: entries about no template, such as failed authentications,
    /// are left out too).
    pub templates: Option<Vec<TemplateName>>,
}

/// A refused write, as the audit log keeps it. Never a secret.
///
/// Refusals of an authenticated token and those of callers without a valid
/// token are kept apart, each class up to its own retention, so a flood of
/// strangers' failures can never push a real token's refusal out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub at: OffsetDateTime,
    /// The token's name, when the token was valid.
    pub actor: Option<TokenName>,
    pub template: Option<TemplateName>,
    pub region: Option<Region>,
    /// What was attempted: `promote`, `rollback`, `put_runtime`.
    pub action: String,
    pub status: u16,
    /// The error code of the answer, e.g. `pin_conflict`.
    pub code: String,
    /// Where the request came from (the peer's address), kept for refusals
    /// without a valid token.
    pub source: Option<String>,
    /// How many refusals this entry stands for: 1, or more for failed
    /// authentications from one source counted together.
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub refusal: Refusal,
}

/// Everything the read path serves, loaded in one read transaction so the
/// three parts agree with each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Ordered by template, then region.
    pub pins: Vec<PinRecord>,
    /// Ordered by name.
    pub runtimes: Vec<RuntimeRecord>,
    /// Active (unrevoked) tokens only.
    pub tokens: Vec<TokenRecord>,
}

/// One event of the change feed, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Strictly increasing in commit order, never reused.
    pub id: i64,
    pub kind: EventType,
    /// RFC 3339, UTC, fixed width.
    pub at: String,
    pub template: Option<TemplateName>,
    pub region: Option<Region>,
    /// The event's `data` object, as JSON text.
    pub data: String,
}

/// Which events to read, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only events with a greater id.
    pub after: i64,
    pub limit: usize,
    pub template: Option<TemplateName>,
    /// Only these types; empty for every type.
    pub types: Vec<EventType>,
    /// Only events about these templates (a template-restricted token's
    /// view: events about no template are left out too).
    pub templates: Option<Vec<TemplateName>>,
}

/// A page of events and where the log stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<EventRecord>,
    /// The newest event id (0 when there has been none).
    pub head: i64,
    /// Every event with an id up to this one has been pruned: an `after`
    /// below it would skip events.
    pub pruned_through: i64,
}

/// A webhook subscription as stored. Its signing secret is stored sealed
/// by the server's key: only a server holding that key can sign with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub name: WebhookName,
    pub url: WebhookUrl,
    /// `None`: every type.
    pub events: Option<Vec<EventType>>,
    /// `None`: every template.
    pub templates: Option<Vec<TemplateName>>,
    pub sealed_secret: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
}

/// `PUT /cp/admin/webhooks/{name}`: the secret is stored only when the
/// webhook is new; a change keeps the old one and enables it again.
#[derive(Debug, Clone)]
pub struct WebhookUpdate {
    pub name: WebhookName,
    pub url: WebhookUrl,
    pub events: Option<Vec<EventType>>,
    pub templates: Option<Vec<TemplateName>>,
    pub sealed_secret: Vec<u8>,
    pub at: OffsetDateTime,
}

/// What a webhook PUT did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookPut {
    Created(WebhookRecord),
    Changed(WebhookRecord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl Decode for DeliveryState {
    fn decode(value: &crate::sql::Value) -> Result<Self, String> {
        match String::decode(value)?.as_str() {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(format!("unknown delivery state `{other}`")),
        }
    }
}

/// One event's delivery to one webhook: the delivery log's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub webhook: WebhookName,
    pub event_id: i64,
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_status: Option<u16>,
    /// One short line, never a receiver's whole body.
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub next_attempt_ms: i64,
    pub delivered_ms: Option<i64>,
}

/// A delivery claimed for an attempt, with what the attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub webhook: WebhookName,
    pub url: WebhookUrl,
    pub sealed_secret: Vec<u8>,
    /// Attempts made before this one.
    pub attempts: i64,
    pub event: EventRecord,
}

/// How an attempt went, to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub webhook: WebhookName,
    pub event_id: i64,
    /// When the attempt ended, Unix milliseconds.
    pub at_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub next: NextStep,
}

/// What the drift watcher saw of one pin, for the change feed: a flip
/// between fresh and stale is an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftObservation {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub tag: String,
    pub tag_digest: Digest,
    pub stale: bool,
    pub stale_since: Option<OffsetDateTime>,
    pub at: OffsetDateTime,
}

/// The last report of one instance, as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub healthy: Option<bool>,
    /// How long after `last_seen_ms` the instance counts as live.
    pub ttl_seconds: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// When it began to run `digest` (its first report of it).
    pub digest_since_ms: i64,
    /// Deleted: kept as a tombstone so every replica learns of it.
    pub deleted: bool,
    /// When this row was last written: replicas read what changed since.
    pub updated_ms: i64,
    /// The token that last reported it (none: written before tokens were
    /// recorded).
    pub reporter: Option<TokenName>,
}

/// A pin's fleet entering a state, for the change feed: `fleet.converged`
/// and `fleet.stalled` are events, once per pin revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTransition {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub revision: i64,
    pub state: Convergence,
    pub counts: FleetCounts,
    pub at: OffsetDateTime,
}
