//! `GET /ui/pins/{template}/{region}`: one pin across the environments,
//! its fleet (current, behind, unknown, and who lags), its drift, and its
//! history; and the forms that change it (rollback, hold, release, abort a
//! canary), shown only to sessions whose token may, each with the session's
//! CSRF token and a reason. A form's write is the API's: the same checks,
//! the same audit line when refused.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use pinion_api::RollbackRequest;
use pinion_core::status::{DriftMark, age_text};
use pinion_core::{Digest, Region, Scope, TemplateName};
use pinion_store::{Action, HistoryEntry, HistoryQuery};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::matrix::{Env, drift_words, environments};
use super::session::{self, Session};
use super::{Form, csrf_refusal, layout, redirect};
use crate::auth::Source;
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::fleet::InstanceState;
use crate::handlers::{
    Attempt, abort_pin_canary, audited, hold_pin, release_pin, rollback_request,
};
use crate::state::AppState;

/// How many history entries the page shows.
const HISTORY: usize = 50;
/// How many lagging instances the page lists.
const LAGGING: usize = 25;

/// The pin a page path names; a name that does not parse is a `4xx` page.
fn parse_pin(template: &str, region: &str) -> Result<(TemplateName, Region), ApiError> {
    let template = TemplateName::parse(template)
        .map_err(|err| ApiError::new(Field::TemplateName.code(), format!("template: {err}")))?;
    let region = Region::parse(region)
        .map_err(|err| ApiError::new(Field::Region.code(), format!("region: {err}")))?;
    Ok((template, region))
}

fn pin_path(template: &TemplateName, region: &Region) -> String {
    format!("/ui/pins/{}/{}", template.as_str(), region.as_str())
}

/// `GET /ui/pins/{template}/{region}`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((template, region)): Path<(String, String)>,
) -> Response {
    let session = match session::current(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return session::to_login(&uri.to_string()),
        Err(error) => return super::error_page(&error, None),
    };
    match render(&state, &session, &headers, &template, &region).await {
        Ok(markup) => super::html_page(StatusCode::OK, markup),
        Err(error) => super::error_page(&error, Some(&session)),
    }
}

async fn render(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    template: &str,
    region: &str,
) -> Result<Markup, ApiError> {
    let (template, region) = parse_pin(template, region)?;
    let caller = &session.caller;
    caller.require_template(&template)?;
    let envs = environments(state, caller);
    let any_pin = envs.iter().any(|env| {
        env.reading
            .as_ref()
            .is_some_and(|reading| reading.pin(template.as_str(), region.as_str()).is_some())
    });
    if !any_pin {
        return Err(ApiError::new(
            Code::RuntimePinMissing,
            format!("no environment has a pin for `{template}`/`{region}`"),
        ));
    }
    let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
    let query = HistoryQuery {
        template: Some(template.clone()),
        region: Some(region.clone()),
        limit: HISTORY,
        ..HistoryQuery::default()
    };
    let history = state
        .query(deadline, move |store| store.history(&query))
        .await?;
    let view = state.view();
    let local = view.pin(&template, &region).cloned();
    let summary = state.fleet().summary();
    let fleet = summary
        .pins
        .get(&(template.clone(), region.clone()))
        .cloned();
    let (lagging, more_lagging) =
        state
            .fleet()
            .instances(&view, None, LAGGING, |live, instance_state, governing| {
                live.place.template == template
                    && *governing == region
                    && instance_state == InstanceState::Behind
            });
    let drift = state
        .drift()
        .report()
        .pins
        .iter()
        .find(|entry| entry.template_name == template.as_str() && entry.region == region.as_str())
        .cloned();
    let now = crate::clock::now();
    let may_change = caller.scope().allows(Scope::Promote) && caller.may_use(&template);
    let path = pin_path(&template, &region);
    let title = format!("{template} / {region}");
    Ok(layout(
        &title,
        Some(session),
        true,
        html! {
            p { a href="/ui" { "← The fleet" } }
            h1 { code { (template.as_str()) } " in " code { (region.as_str()) } }
            (across(&envs, &template, &region, now))
            @if let Some(pin) = &local {
                section aria-labelledby="here" {
                    h2 #here { "This server's pin" }
                    dl {
                        dt { "Digest" } dd { code.full { (pin.digest.as_str()) } }
                        dt { "Moved" } dd { (when(pin.promoted_at, now)) " by " (pin.promoted_by.as_str()) }
                        @if let Some(sha) = &pin.git_sha { dt { "Git commit" } dd { code { (sha.as_str()) } } }
                        @if let Some(notes) = &pin.notes { dt { "Notes" } dd.notes { (notes.as_str()) } }
                        dt { "Hold" }
                        dd {
                            @match &pin.hold {
                                Some(hold) => { strong.held { "held" } " by " (hold.held_by.as_str()) " " (when(hold.held_at, now)) ": " (hold.reason.as_str()) }
                                None => { "not held" }
                            }
                        }
                        @if let Some(canary) = &pin.canary {
                            dt { "Canary" }
                            dd { (canary.percent.get()) "% of instances get " code { (canary.digest.as_str()) } ", since " (when(canary.started_at, now)) " by " (canary.started_by.as_str()) }
                        }
                    }
                    @if may_change {
                        (forms(session, &path, pin, &history))
                    }
                }
            }
            section aria-labelledby="fleet" {
                h2 #fleet { "Fleet" }
                @match &fleet {
                    None => p { "No instance reports under this pin." }
                    Some(fleet) => {
                        p {
                            strong { (fleet.counts.current) } " current, "
                            strong { (fleet.counts.behind) } " behind, "
                            strong { (fleet.counts.unknown) } " unknown — "
                            (fleet.state.as_str())
                        }
                        @if !lagging.is_empty() {
                            table {
                                caption { "Instances behind this pin" @if more_lagging { " (the first " (LAGGING) ")" } }
                                thead { tr { th scope="col" { "Instance" } th scope="col" { "Runs" } th scope="col" { "Region" } th scope="col" { "Last seen" } } }
                                tbody {
                                    @for found in &lagging {
                                        tr {
                                            td { code { (found.record.id.as_str()) } }
                                            td { code title=(found.record.digest.as_str()) { (found.record.digest.short()) } }
                                            td { (found.record.region.as_str()) }
                                            td { (when_ms(found.record.last_seen_ms, now)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="drift" {
                h2 #drift { "Drift" }
                @match &drift {
                    None => p { "The drift watcher has not checked this pin." }
                    Some(entry) => {
                        p {
                            (drift_words(DriftMark::from_status(Some(&entry.status))))
                            " (" code { (entry.status) } ")"
                            @if let Some(tag) = &entry.tag_digest { "; the tag points at " code { (tag) } }
                            @if let Some(since) = &entry.stale_since { "; behind since " (since) }
                            @if let Some(error) = &entry.error { "; " (error) }
                        }
                    }
                }
            }
            section aria-labelledby="history" {
                h2 #history { "History" }
                @if history.is_empty() { p { "No history." } }
                ol.history reversed {
                    @for entry in &history { (history_entry(entry, now)) }
                }
            }
        },
    ))
}

/// The pin in every environment, side by side: one click from the matrix
/// compares them.
fn across(envs: &[Env], template: &TemplateName, region: &Region, now: OffsetDateTime) -> Markup {
    let digests: Vec<Option<String>> = envs
        .iter()
        .map(|env| {
            env.reading.as_ref().and_then(|reading| {
                reading
                    .pin(template.as_str(), region.as_str())
                    .map(|pin| pin.image_digest.clone())
            })
        })
        .collect();
    let reached: Vec<&Option<String>> = envs
        .iter()
        .zip(&digests)
        .filter(|(env, _)| env.reading.is_some())
        .map(|(_, digest)| digest)
        .collect();
    let disagree = reached.windows(2).any(|pair| pair[0] != pair[1]);
    html! {
        section aria-labelledby="environments" {
            h2 #environments { "Across environments" }
            @if disagree { p.differs role="status" { "≠ The environments pin different digests." } }
            @else if envs.len() > 1 { p { "= Every environment reached pins the same digest." } }
            table {
                thead { tr { th scope="col" { "Environment" } th scope="col" { "Digest" } th scope="col" { "Moved" } th scope="col" { "Drift" } } }
                tbody {
                    @for (env, digest) in envs.iter().zip(&digests) {
                        @let pin = env.reading.as_ref().and_then(|reading| reading.pin(template.as_str(), region.as_str()));
                        tr class=(if disagree && env.reading.is_some() { "differs" } else { "" }) {
                            th scope="row" { (env.name) }
                            @match (&env.reading, digest, pin) {
                                (None, _, _) => {
                                    td colspan="3" {
                                        strong.bad { "unreachable" } ", last seen "
                                        @match env.last_seen { Some(at) => { (when(at, now)) } None => { "never" } }
                                    }
                                }
                                (Some(_), Some(digest), Some(pin)) => {
                                    td { code.full { (digest) } }
                                    td {
                                        @if let Ok(at) = OffsetDateTime::parse(&pin.promoted_at, &Rfc3339) { (when(at, now)) }
                                        " by " (pin.promoted_by)
                                    }
                                    td {
                                        @let status = env.reading.as_ref().and_then(|reading| reading.drift.pins.iter().find(|entry| entry.template_name == template.as_str() && entry.region == region.as_str())).map(|entry| entry.status.as_str());
                                        (drift_words(DriftMark::from_status(status)))
                                    }
                                }
                                (Some(_), _, _) => { td colspan="3" { "no pin" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn history_entry(entry: &HistoryEntry, now: OffsetDateTime) -> Markup {
    html! {
        li value=(entry.revision) {
            strong { (entry.action.as_str()) }
            @match entry.action {
                Action::Promote | Action::Rollback => {
                    " to " code title=(entry.to_digest.as_str()) { (entry.to_digest.short()) }
                    @if let Some(from) = &entry.from_digest { " from " code title=(from.as_str()) { (from.short()) } }
                }
                Action::Hold | Action::Release => {}
            }
            " by " (entry.actor.as_str()) " " (when(entry.at, now))
            @if entry.forced { " " strong { "(forced)" } }
            @if let Some(sha) = &entry.git_sha {
                " · commit "
                @match &entry.ci.run_url {
                    Some(url) => { a href=(url.as_str()) rel="noopener noreferrer" { code { (sha.as_str().get(..7).unwrap_or(sha.as_str())) } } }
                    None => { code { (sha.as_str().get(..7).unwrap_or(sha.as_str())) } }
                }
            }
            @if entry.git_sha.is_none() {
                @if let Some(url) = &entry.ci.run_url { " · " a href=(url.as_str()) rel="noopener noreferrer" { "CI run" } }
            }
            @if let Some(notes) = &entry.notes { div.notes { (notes.as_str()) } }
        }
    }
}

/// The forms a session of scope `promote` gets.
fn forms(
    session: &Session,
    path: &str,
    pin: &pinion_store::PinRecord,
    history: &[HistoryEntry],
) -> Markup {
    // Where a rollback may go: the digests the pin had before, newest first.
    let mut earlier: Vec<&Digest> = Vec::new();
    for entry in history {
        for digest in [Some(&entry.to_digest), entry.from_digest.as_ref()]
            .into_iter()
            .flatten()
        {
            if *digest != pin.digest && !earlier.contains(&digest) {
                earlier.push(digest);
            }
        }
    }
    html! {
        div.forms {
            @if !earlier.is_empty() {
                form.action method="post" action={ (path) "/rollback" } aria-labelledby="rollback-title" {
                    h3 #rollback-title { "Roll back" }
                    input type="hidden" name="csrf" value=(session.csrf);
                    // The digest this page showed: a pin moved meanwhile is
                    // a conflict, not a rollback of something unseen.
                    input type="hidden" name="expected_digest" value=(pin.digest.as_str());
                    p {
                        label for="rollback-to" { "To digest" } " "
                        select #rollback-to name="to_digest" {
                            @for digest in &earlier { option value=(digest.as_str()) { (digest.short()) } }
                        }
                    }
                    p {
                        label for="rollback-reason" { "Reason" } " "
                        input #rollback-reason type="text" name="reason" required maxlength="1000";
                    }
                    p {
                        input #rollback-hold type="checkbox" name="hold" value="1";
                        " " label for="rollback-hold" { "Hold the pin afterwards" }
                    }
                    p { button type="submit" { "Roll back" } }
                }
            }
            @if pin.hold.is_none() {
                form.action method="post" action={ (path) "/hold" } aria-labelledby="hold-title" {
                    h3 #hold-title { "Hold" }
                    input type="hidden" name="csrf" value=(session.csrf);
                    p {
                        label for="hold-reason" { "Reason" } " "
                        input #hold-reason type="text" name="reason" required maxlength="500";
                    }
                    p { button type="submit" { "Hold" } }
                }
            } @else {
                form.action method="post" action={ (path) "/release" } aria-labelledby="release-title" {
                    h3 #release-title { "Release the hold" }
                    input type="hidden" name="csrf" value=(session.csrf);
                    p {
                        label for="release-reason" { "Reason" } " "
                        input #release-reason type="text" name="reason" required maxlength="500";
                    }
                    p { button type="submit" { "Release" } }
                }
            }
            @if pin.canary.is_some() {
                form.action method="post" action={ (path) "/abort-canary" } aria-labelledby="abort-title" {
                    h3 #abort-title { "Abort the canary" }
                    input type="hidden" name="csrf" value=(session.csrf);
                    p {
                        label for="abort-reason" { "Reason" } " "
                        input #abort-reason type="text" name="reason" required maxlength="500";
                    }
                    p { button type="submit" { "Abort canary" } }
                }
            }
        }
    }
}

fn when(at: OffsetDateTime, now: OffsetDateTime) -> Markup {
    let full = at.format(&Rfc3339).unwrap_or_default();
    html! { time datetime=(full) title=(full) { (age_text((now - at).whole_seconds())) " ago" } }
}

fn when_ms(ms: i64, now: OffsetDateTime) -> Markup {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(at) => when(at, now),
        Err(_) => html! { "?" },
    }
}

/// What every form's handler starts with: the session (else to the login
/// form), the form, its CSRF token, the scope, the pin, a reason.
struct Submitted {
    session: Session,
    form: Form,
    template: TemplateName,
    region: Region,
    reason: String,
    deadline: Deadline,
}

/// Why a form's write was not attempted.
enum Refused {
    /// Answered already (no session, an unreadable form).
    Page(Response),
    /// A refusal to audit and show.
    Api(ApiError, Session),
}

async fn submitted(
    state: &AppState,
    attempt: &mut Attempt,
    headers: &HeaderMap,
    template: &str,
    region: &str,
    body: Body,
) -> Result<Submitted, Refused> {
    let session = match session::current(state, headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(Refused::Page(redirect("/ui/login"))),
        Err(error) => return Err(Refused::Page(super::error_page(&error, None))),
    };
    let form = match Deadline::for_request(headers, state.settings().request_timeout) {
        Ok(deadline) => Form::read(body, state.settings().body_limit, &deadline).await,
        Err(error) => Err(error),
    };
    let form = match form {
        Ok(form) => form,
        Err(error) => return Err(Refused::Page(super::error_page(&error, Some(&session)))),
    };
    let checked = (|| {
        let caller = attempt.caller(Ok(session.caller.clone()))?;
        if !session.csrf_matches(form.get("csrf")) {
            return Err(csrf_refusal());
        }
        caller.require(Scope::Promote)?;
        let (template, region) = attempt.pin(template, Some(region))?;
        caller.require_template(&template)?;
        let reason = form
            .get("reason")
            .map(str::trim)
            .filter(|reason| !reason.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    Code::InvalidRequest,
                    "a reason is required; nothing was changed",
                )
            })?
            .to_owned();
        let deadline = Deadline::for_request(headers, state.settings().request_timeout)?;
        Ok((template, region, reason, deadline))
    })();
    match checked {
        Ok((template, region, reason, deadline)) => Ok(Submitted {
            session,
            form,
            template,
            region,
            reason,
            deadline,
        }),
        Err(error) => Err(Refused::Api(error, session)),
    }
}

/// The answer to a form: back to the pin's page when the write was made,
/// else the refusal as a page (audited like the API's).
async fn answer(
    state: &AppState,
    attempt: Attempt,
    result: Result<Response, ApiError>,
    session: &Session,
    back: &str,
) -> Response {
    match audited(state, attempt, result).await {
        Ok(_) => redirect(back),
        Err(error) => super::error_page(&error, Some(session)),
    }
}

/// `POST /ui/pins/{template}/{region}/rollback`: `to_digest`, `reason` (the
/// history's notes), `hold` (`1`: hold the pin in the same transaction).
pub async fn rollback(
    State(state): State<AppState>,
    source: Source,
    headers: HeaderMap,
    Path((template, region)): Path<(String, String)>,
    body: Body,
) -> Response {
    let mut attempt = Attempt::new("rollback", source);
    let (result, session) =
        match submitted(&state, &mut attempt, &headers, &template, &region, body).await {
            Err(Refused::Page(response)) => return response,
            Err(Refused::Api(error, session)) => (Err(error), session),
            Ok(submitted) => {
                let request = RollbackRequest {
                    template_name: submitted.template.to_string(),
                    region: Some(submitted.region.to_string()),
                    to_digest: submitted
                        .form
                        .get("to_digest")
                        .filter(|digest| !digest.is_empty())
                        .map(str::to_owned),
                    notes: Some(submitted.reason.clone()),
                    hold: submitted.form.get("hold") == Some("1"),
                    reason: None,
                    expected_digest: submitted
                        .form
                        .get("expected_digest")
                        .filter(|digest| !digest.is_empty())
                        .map(str::to_owned),
                    keep_canary: false,
                };
                let caller = submitted.session.caller.clone();
                let result =
                    rollback_request(&state, &mut attempt, &caller, request, submitted.deadline)
                        .await;
                (result, submitted.session)
            }
        };
    let back = format!("/ui/pins/{template}/{region}");
    answer(&state, attempt, result, &session, &back).await
}

/// `POST /ui/pins/{template}/{region}/hold`: `reason`.
pub async fn hold(
    State(state): State<AppState>,
    source: Source,
    headers: HeaderMap,
    Path((template, region)): Path<(String, String)>,
    body: Body,
) -> Response {
    let mut attempt = Attempt::new("hold", source);
    let (result, session) =
        match submitted(&state, &mut attempt, &headers, &template, &region, body).await {
            Err(Refused::Page(response)) => return response,
            Err(Refused::Api(error, session)) => (Err(error), session),
            Ok(submitted) => {
                let request = pinion_api::HoldRequest {
                    template_name: submitted.template.to_string(),
                    region: Some(submitted.region.to_string()),
                    reason: submitted.reason.clone(),
                };
                let caller = submitted.session.caller.clone();
                let result =
                    hold_pin(&state, &mut attempt, &caller, request, submitted.deadline).await;
                (result, submitted.session)
            }
        };
    let back = format!("/ui/pins/{template}/{region}");
    answer(&state, attempt, result, &session, &back).await
}

/// `POST /ui/pins/{template}/{region}/release`: `reason` (the API's
/// release has no field for it: it goes to the server's log line).
pub async fn release(
    State(state): State<AppState>,
    source: Source,
    headers: HeaderMap,
    Path((template, region)): Path<(String, String)>,
    body: Body,
) -> Response {
    let mut attempt = Attempt::new("release", source);
    let (result, session) =
        match submitted(&state, &mut attempt, &headers, &template, &region, body).await {
            Err(Refused::Page(response)) => return response,
            Err(Refused::Api(error, session)) => (Err(error), session),
            Ok(submitted) => {
                tracing::info!(reason = %submitted.reason, "release asked for on the page");
                let caller = submitted.session.caller.clone();
                let result = release_pin(
                    &state,
                    &caller,
                    submitted.template,
                    submitted.region,
                    submitted.deadline,
                )
                .await;
                (result, submitted.session)
            }
        };
    let back = format!("/ui/pins/{template}/{region}");
    answer(&state, attempt, result, &session, &back).await
}

/// `POST /ui/pins/{template}/{region}/abort-canary`: `reason` (to the
/// server's log line, as for a release).
pub async fn abort_canary(
    State(state): State<AppState>,
    source: Source,
    headers: HeaderMap,
    Path((template, region)): Path<(String, String)>,
    body: Body,
) -> Response {
    let mut attempt = Attempt::new("canary_abort", source);
    let (result, session) =
        match submitted(&state, &mut attempt, &headers, &template, &region, body).await {
            Err(Refused::Page(response)) => return response,
            Err(Refused::Api(error, session)) => (Err(error), session),
            Ok(submitted) => {
                tracing::info!(reason = %submitted.reason, "canary abort asked for on the page");
                let caller = submitted.session.caller.clone();
                let result = abort_pin_canary(
                    &state,
                    &caller,
                    submitted.template,
                    submitted.region,
                    submitted.deadline,
                )
                .await;
                (result, submitted.session)
            }
        };
    let back = format!("/ui/pins/{template}/{region}");
    answer(&state, attempt, result, &session, &back).await
}
