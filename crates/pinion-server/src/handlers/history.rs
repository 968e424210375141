//! The ledger: pin history (read scope) and the audit of refused writes
//! (admin scope). Both read the database, not the view: they are for
//! people, not for the hot path.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use pinion_api::{AuditEntry, AuditList, HistoryEntry, HistoryList};
use pinion_core::{Scope, TemplateName};
use pinion_store::{AuditQuery, HistoryQuery};

use super::{Query, format_time};
use crate::auth::Caller;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<HistoryList>, ApiError> {
    caller.require(Scope::Read)?;
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    let query = Query::parse(raw.as_deref());
    let template = query.template()?;
    if let Some(template) = &template {
        caller.require_template(template)?;
    }
    let limit = query.number("limit", MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize;
    let before = query.number("before", i64::MAX)?;
    let request = HistoryQuery {
        template,
        region: query.region()?,
        before,
        // One more than asked tells whether there is a next page.
        limit: limit + 1,
        templates: caller.templates().map(<[TemplateName]>::to_vec),
    };
    let mut entries = state
        .query(deadline, move |store| store.history(&request))
        .await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let history: Vec<HistoryEntry> = entries
        .iter()
        .map(|entry| HistoryEntry {
            revision: entry.revision,
            template_name: entry.template.to_string(),
            region: entry.region.to_string(),
            from_digest: entry.from_digest.as_ref().map(ToString::to_string),
            to_digest: entry.to_digest.to_string(),
            git_sha: entry.git_sha.as_ref().map(|sha| sha.as_str().to_owned()),
            notes: entry.notes.as_ref().map(|notes| notes.as_str().to_owned()),
            actor: entry.actor.to_string(),
            action: entry.action.as_str().to_owned(),
            at: format_time(entry.at),
            ci_run_url: entry.ci.run_url.as_ref().map(|url| url.as_str().to_owned()),
            repository: entry
                .ci
                .repository
                .as_ref()
                .map(|label| label.as_str().to_owned()),
            workflow: entry
                .ci
                .workflow
                .as_ref()
                .map(|label| label.as_str().to_owned()),
            build_sequence: entry.build_sequence,
            forced: entry.forced,
            soak: entry.soak.as_ref().map(|soak| pinion_api::SoakFigures {
                source: soak.source.as_str().to_owned(),
                soaked_seconds: soak.soaked.as_secs(),
                required_seconds: soak.required.as_secs(),
            }),
        })
        .collect();
    let next_before = more
        .then(|| entries.last().map(|entry| entry.revision))
        .flatten();
    Ok(Json(HistoryList {
        history,
        next_before,
    }))
}

/// The audit of refused writes. A template-restricted admin token sees only
/// the entries about its templates (not other templates' entries, nor the
/// failed authentications of strangers).
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditList>, ApiError> {
    caller.require(Scope::Admin)?;
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    let query = Query::parse(raw.as_deref());
    let limit = query.number("limit", MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize;
    let request = AuditQuery {
        before: query.number("before", i64::MAX)?,
        limit: limit + 1,
        templates: caller.templates().map(<[TemplateName]>::to_vec),
    };
    let mut entries = state
        .query(deadline, move |store| store.audit(&request))
        .await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_before = more.then(|| entries.last().map(|entry| entry.id)).flatten();
    let audit = entries
        .into_iter()
        .map(|entry| AuditEntry {
            id: entry.id,
            at: format_time(entry.refusal.at),
            actor: entry.refusal.actor.map(|name| name.to_string()),
            template_name: entry.refusal.template.map(|name| name.to_string()),
            region: entry.refusal.region.map(|name| name.to_string()),
            action: entry.refusal.action,
            status: entry.refusal.status,
            code: entry.refusal.code,
            source: entry.refusal.source,
            count: entry.refusal.count,
        })
        .collect();
    Ok(Json(AuditList { audit, next_before }))
}
