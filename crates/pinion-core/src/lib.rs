//! Pinion's domain: the values a pin is made of, the rules they obey, and
//! the decisions made over them (whether a promotion moves a pin, what a
//! drift check found).
//!
//! Every type here can only hold a valid value: the fields are private and the
//! only way in is a parser (`FromStr` / `parse`). Code that holds a [`Digest`]
//! never has to ask whether it is well-formed. This crate does no IO and reads
//! no clock, so it can be tested exhaustively and used by every other crate.

mod canary;
mod drift;
mod event;
mod fleet;
mod name;
mod promotion;
mod reference;
mod scope;
mod soak;
pub mod status;
mod text;
mod url;

pub use canary::{
    CanaryAsk, CanaryDecision, CanaryHealth, CanaryPin, HealthCounts, HealthRule, Percent, Ring,
    bucket, decide_canary, judge_canary, ring,
};
pub use drift::{DriftRow, DriftStatus, PinnedDigest, TagAnswer, template_rows};
pub use event::{AttemptOutcome, EventType, MAX_RETRY_AFTER, NextStep, next_step};
pub use fleet::{Convergence, FleetCounts, converge};
pub use name::{InstanceId, Region, TemplateName, TokenName, WebhookName};
pub use promotion::{Ask, Expectation, PinState, PromoteDecision, decide_promotion};
pub use reference::{Digest, ImageRef, Repository};
pub use scope::Scope;
pub use soak::{Soak, SoakScan, SourceMove, soaked};
pub use text::{GitSha, HoldReason, Label, Notes, RunUrl, WebhookUrl};
pub use url::is_internal_address;

/// Why a value was refused. `kind` says which field it was for, so the edge
/// can name it (for example as the error code `invalid_digest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct ParseError {
    kind: Kind,
    reason: String,
}

/// The kinds of value this crate parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TemplateName,
    Region,
    TokenName,
    Digest,
    Repository,
    GitSha,
    Notes,
    Scope,
    RunUrl,
    Label,
    WebhookName,
    WebhookUrl,
    EventType,
    InstanceId,
    Reason,
    Percent,
}

impl Kind {
    /// A stable snake_case name, used in error codes (`invalid_<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TemplateName => "template_name",
            Kind::Region => "region",
            Kind::TokenName => "token_name",
            Kind::Digest => "digest",
            Kind::Repository => "repository",
            Kind::GitSha => "git_sha",
            Kind::Notes => "notes",
            Kind::Scope => "scope",
            Kind::RunUrl => "ci_run_url",
            Kind::Label => "label",
            Kind::WebhookName => "webhook_name",
            Kind::WebhookUrl => "webhook_url",
            Kind::EventType => "event_type",
            Kind::InstanceId => "instance_id",
            Kind::Reason => "reason",
            Kind::Percent => "percent",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

impl ParseError {
    pub(crate) fn new(kind: Kind, reason: impl Into<String>) -> Self {
        ParseError {
            kind,
            reason: reason.into(),
        }
    }

    /// Which field the refused value was for.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The reason alone, without the field name.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Shows a refused input in a message: quoted, escaped onto one line, and cut
/// short, so a 10 KB or multi-line value cannot flood a log or a terminal.
pub(crate) fn quote(input: &str) -> String {
    const MAX_CHARS: usize = 80;
    let mut shown: String = input.chars().take(MAX_CHARS).collect();
    let cut = shown.len() < input.len();
    shown = format!("{shown:?}");
    if cut {
        shown.push_str(" (cut)");
    }
    format!("`{shown}`")
}
