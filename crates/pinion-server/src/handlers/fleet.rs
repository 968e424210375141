//! The fleet: reports of what instances run (scope `report`), the
//! convergence of each pin, the instances, and what a registry clean-up
//! must keep.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pinion_api::{FleetReport, Instance, InstanceList, ReportAccepted, Retained, Retention};
use pinion_core::{
    Digest, ImageRef, InstanceId, ParseError, Region, Repository, Scope, TemplateName,
};

use super::{Attempt, Query, audited, parse_field, read_json};
use crate::auth::{Caller, Source};
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::fleet::{InstanceState, Report, format_ms};
use crate::state::AppState;

/// A report of 10,000 instances is about 2 MB of JSON.
const REPORT_BODY_LIMIT: usize = 4 * 1024 * 1024;
const MAX_INSTANCES: usize = 10_000;
const DEFAULT_TTL: i64 = 300;
const TTL_RANGE: std::ops::RangeInclusive<i64> = 5..=86_400;
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

fn at(ms: i64) -> String {
    format_ms(ms)
}

pub async fn report(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("report", source);
    let result = report_inner(&state, &mut attempt, caller, &headers, body).await;
    audited(&state, attempt, result).await
}

/// All or nothing: every entry is checked before any is taken, and the
/// first that fails is named by its index.
async fn report_inner(
    state: &AppState,
    attempt: &mut Attempt,
    caller: Result<Caller, ApiError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = attempt.caller(caller)?;
    caller.require(Scope::Report)?;
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let request: FleetReport = read_json(body, headers, REPORT_BODY_LIMIT, &deadline).await?;
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL);
    if !TTL_RANGE.contains(&ttl) {
        return Err(ApiError::new(
            Code::InvalidTtlSeconds,
            format!("`ttl_seconds` must be from 5 to 86400, not {ttl}"),
        ));
    }
    if request.instances.is_empty() || request.instances.len() > MAX_INSTANCES {
        return Err(ApiError::new(
            Code::InvalidRequest,
            format!(
                "`instances` must list 1 to {MAX_INSTANCES} instances, not {}",
                request.instances.len()
            ),
        ));
    }
    let view = state.view();
    let fleet = state.fleet();
    let mut seen = std::collections::HashSet::with_capacity(request.instances.len());
    let mut reports = Vec::with_capacity(request.instances.len());
    for (index, entry) in request.instances.iter().enumerate() {
        let id = entry_field(
            index,
            Field::InstanceId,
            InstanceId::parse(&entry.instance_id),
        )?;
        let template = entry_field(
            index,
            Field::TemplateName,
            TemplateName::parse(&entry.template_name),
        )?;
        let region = entry_field(index, Field::Region, Region::parse(&entry.region))?;
        let digest = entry_field(
            index,
            Field::ImageDigest,
            Digest::parse(&entry.image_digest),
        )?;
        if !caller.may_use(&template) {
            return Err(ApiError::forbidden(format!(
                "`instances[{index}]`: token `{}` may not report for template `{template}`",
                caller.name()
            )));
        }
        if !view.runtimes.contains_key(&template) {
            return Err(ApiError::new(
                Code::UnknownTemplate,
                format!("`instances[{index}]`: template `{template}` is not in the catalog"),
            ));
        }
        if !seen.insert(id.clone()) {
            return Err(ApiError::new(
                Code::InvalidInstanceId,
                format!("`instances[{index}].instance_id`: `{id}` is reported twice in one report"),
            ));
        }
        // A restricted token may not take an instance away from a template
        // it may not use (that would empty the other template's fleet).
        if caller.templates().is_some() {
            if let Some(known) = fleet
                .get(&id)
                .filter(|known| !caller.may_use(&known.template))
            {
                return Err(ApiError::forbidden(format!(
                    "`instances[{index}]`: instance `{id}` runs template `{}`, which token `{}` may not report for",
                    known.template,
                    caller.name()
                )));
            }
        }
        reports.push(Report {
            id,
            template,
            region,
            digest,
            healthy: entry.healthy,
        });
    }
    let accepted = reports.len();
    fleet
        .report(reports, ttl, caller.name())
        .map_err(|full| {
            let whose = if full.per_token {
                format!("token `{}` has", caller.name())
            } else {
                "the fleet has".to_owned()
            };
            ApiError::new(
                Code::FleetFull,
                format!(
                    "{whose} {} of at most {} instances; this report would add {} new ones, so none of it was recorded (instances already known always fit; silent ones are forgotten 7 days after their time to live)",
                    full.held, full.limit, full.new
                ),
            )
        })?;
    Ok(Json(ReportAccepted { accepted }).into_response())
}

/// A field of the `index`-th instance of a report, parsed; the error names
/// the entry.
fn entry_field<T>(
    index: usize,
    field: Field,
    parsed: Result<T, ParseError>,
) -> Result<T, ApiError> {
    parsed.map_err(|err| {
        ApiError::new(
            field.code(),
            format!("`instances[{index}].{}`: {}", field.name(), err.reason()),
        )
    })
}

pub async fn delete_instance(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    source: Source,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut attempt = Attempt::new("delete_instance", source);
    let result = async {
        let caller = attempt.caller(caller)?;
        caller.require(Scope::Report)?;
        let id = parse_field(Field::InstanceId, InstanceId::parse(&id))?;
        let missing = || ApiError::new(Code::InstanceNotFound, format!("no instance `{id}`"));
        // Known here, or (reported to another replica, not read yet) in
        // the database.
        let known = match state.fleet().get(&id) {
            Some(record) => Some(record),
            None => {
                let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
                let looked_up = id.clone();
                state
                    .query(deadline, move |store| store.find_instance(&looked_up))
                    .await?
            }
        };
        let Some(known) = known.filter(|record| caller.may_use(&record.template)) else {
            return Err(missing());
        };
        attempt.template = Some(known.template.clone());
        if !state.fleet().delete(&id, Some(known)) {
            return Err(missing());
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    audited(&state, attempt, result).await
}

/// `GET /cp/fleet`: each pin's fleet, from the summary (made from this
/// server's reports at most a quarter of a second ago; other replicas'
/// within a few seconds), whose entries are rendered once per summary.
pub async fn fleet(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let query = Query::parse(raw.as_deref());
    let template = query.template()?;
    let region = query.region()?;
    let summary = state.fleet().summary();
    let mut body = String::from(r#"{"fleet":["#);
    let entries = summary
        .pins
        .values()
        .filter(|entry| template.as_ref().is_none_or(|t| *t == entry.template))
        .filter(|entry| region.as_ref().is_none_or(|r| *r == entry.region))
        .filter(|entry| caller.may_use(&entry.template));
    for (n, entry) in entries.enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&entry.json);
    }
    body.push_str("]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /cp/fleet/instances`: who runs what, by state; `region` is the
/// governing pin's (the fleet entry's), so `?template_name=codex&region=
/// global&state=behind` lists everyone behind the `codex`/`global` pin.
pub async fn instances(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<InstanceList>, ApiError> {
    caller.require(Scope::Read)?;
    let query = Query::parse(raw.as_deref());
    let template = query.template()?;
    let region = query.region()?;
    let wanted_state = match query.one("state")? {
        None => None,
        Some(text) => Some(InstanceState::parse(&text).ok_or_else(|| {
            ApiError::new(
                Code::InvalidRequest,
                "`state` must be `current`, `behind` or `unknown`",
            )
        })?),
    };
    let after = match query.one("after")? {
        None => None,
        Some(text) => Some(parse_field(Field::InstanceId, InstanceId::parse(&text))?),
    };
    let limit = query.number("limit", MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize;
    let view = state.view();
    let (found, more) =
        state
            .fleet()
            .instances(&view, after.as_ref(), limit, |live, state, governing| {
                caller.may_use(&live.place.template)
                    && template.as_ref().is_none_or(|t| *t == live.place.template)
                    && region.as_ref().is_none_or(|r| r == governing)
                    && wanted_state.is_none_or(|wanted| wanted == state)
            });
    let page: Vec<Instance> = found
        .into_iter()
        .map(|found| Instance {
            instance_id: found.record.id.to_string(),
            template_name: found.record.template.to_string(),
            region: found.record.region.to_string(),
            image_digest: found.record.digest.to_string(),
            state: found.state.as_str().to_owned(),
            healthy: found.record.healthy,
            first_seen: at(found.record.first_seen_ms),
            last_seen: at(found.record.last_seen_ms),
            governing_region: found.governing.to_string(),
            digest_since: Some(at(found.record.digest_since_ms)),
            state_since: Some(at(found.since_ms)),
        })
        .collect();
    let next_after = more
        .then(|| page.last().map(|instance| instance.instance_id.clone()))
        .flatten();
    Ok(Json(InstanceList {
        instances: page,
        next_after,
    }))
}

/// `GET /cp/admin/runtime-image/retention?history=N`: every digest a
/// registry clean-up must keep, with why: pinned, run by a live instance,
/// or one of the newest `N` (default 5) history entries of a pin (where a
/// rollback may go).
pub async fn retention(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Retention>, ApiError> {
    caller.require(Scope::Read)?;
    let query = Query::parse(raw.as_deref());
    let history = query.number("history", 100)?.unwrap_or(5) as usize;
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    let recent = state
        .query(deadline, move |store| store.recent_digests(history))
        .await?;
    let view = state.view();
    let repository = |template: &TemplateName| -> Option<Repository> {
        view.runtimes.get(template)?.repository.clone()
    };
    let mut retain: BTreeMap<(String, String), (Repository, Digest, Vec<&'static str>)> =
        BTreeMap::new();
    let mut keep = |template: &TemplateName, digest: &Digest, reason: &'static str| {
        if !caller.may_use(template) {
            return;
        }
        let Some(repository) = repository(template) else {
            return;
        };
        let entry = retain
            .entry((repository.to_string(), digest.to_string()))
            .or_insert_with(|| (repository.clone(), digest.clone(), Vec::new()));
        if !entry.2.contains(&reason) {
            entry.2.push(reason);
        }
    };
    for pin in view.pins() {
        keep(&pin.template, &pin.digest, "pinned");
        if let Some(canary) = &pin.canary {
            keep(&pin.template, &canary.digest, "canary");
        }
    }
    let mut running: HashSet<(TemplateName, Digest)> = HashSet::new();
    state.fleet().visit(&view, |_, live, instance_state, _| {
        if instance_state != InstanceState::Unknown {
            let key = (live.place.template.clone(), Digest::clone(&live.digest));
            running.insert(key);
        }
    });
    for (template, digest) in &running {
        keep(template, digest, "running");
    }
    for (template, _region, digest) in &recent {
        keep(template, digest, "history");
    }
    const ORDER: [&str; 4] = ["pinned", "canary", "running", "history"];
    let retain = retain
        .into_values()
        .map(|(repository, digest, mut reasons)| {
            reasons.sort_by_key(|reason| ORDER.iter().position(|known| known == reason));
            Retained {
                repository: repository.to_string(),
                image_digest: digest.to_string(),
                image_ref: ImageRef::new(repository, digest).to_string(),
                reasons: reasons.into_iter().map(str::to_owned).collect(),
            }
        })
        .collect();
    Ok(Json(Retention { retain }))
}
