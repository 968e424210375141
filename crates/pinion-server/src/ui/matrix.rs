//! `GET /ui`: every template's pins, one column group per environment (this
//! server's own, then each `--peer`), one column per region that has a pin
//! there. Cells where environments disagree say so in words and with a
//! mark, not by colour alone. Filters are plain links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{Markup, html};
use pinion_api::Pin;
use pinion_api::status::Environment;
use pinion_core::status::{Cell, Column, DriftMark, Flag, Row, age_text, matrix};
use pinion_core::{Convergence, Region, TemplateName};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::session::{self, Session};
use super::{html_page, layout, query_value};
use crate::auth::Caller;
use crate::error::{ApiError, Code, Field};
use crate::handlers::pin_body;
use crate::state::AppState;

/// One environment as the page shows it.
pub(super) struct Env {
    pub name: String,
    /// A peer's base URL; none for this server.
    pub url: Option<String>,
    /// What it says now; none when it could not be read.
    pub reading: Option<Arc<Environment>>,
    pub last_seen: Option<OffsetDateTime>,
    pub error: Option<String>,
}

impl Env {
    pub fn column(&self) -> Column {
        match &self.reading {
            Some(environment) => environment.column(),
            None => Column::Unreachable,
        }
    }
}

/// This server's pins, drift and fleet, as the caller may see them.
fn local(state: &AppState, caller: &Caller) -> Environment {
    let view = state.view();
    let pins = view
        .pins()
        .filter(|pin| caller.may_use(&pin.template))
        .map(|pin| pin_body(&view, pin))
        .collect();
    let mut drift = (*state.drift().report()).clone();
    drift.pins.retain(|entry| {
        TemplateName::parse(&entry.template_name).is_ok_and(|name| caller.may_use(&name))
    });
    let fleet = state
        .fleet()
        .summary()
        .pins
        .values()
        .filter(|entry| caller.may_use(&entry.template))
        .map(crate::fleet::PinFleet::to_wire)
        .collect();
    Environment { pins, drift, fleet }
}

/// Every environment: this server first, then its peers, each limited to
/// the templates the caller may see.
pub(super) fn environments(state: &AppState, caller: &Caller) -> Vec<Env> {
    let mut envs = vec![Env {
        name: state.settings().environment.clone(),
        url: None,
        reading: Some(Arc::new(local(state, caller))),
        last_seen: Some(crate::clock::now()),
        error: None,
    }];
    for reading in state.peers().readings() {
        let reached = reading.reached().map(|environment| {
            if caller.templates().is_none() {
                return environment;
            }
            let visible = |template: &str| {
                TemplateName::parse(template).is_ok_and(|name| caller.may_use(&name))
            };
            let mut environment = (*environment).clone();
            environment.pins.retain(|pin| visible(&pin.template_name));
            environment
                .drift
                .pins
                .retain(|entry| visible(&entry.template_name));
            environment
                .fleet
                .retain(|entry| visible(&entry.template_name));
            Arc::new(environment)
        });
        let error = match (&reached, reading.attempted) {
            (Some(_), _) => None,
            (None, false) => Some("not read yet".to_owned()),
            (None, true) => reading.error.clone(),
        };
        envs.push(Env {
            name: reading.name.clone(),
            url: Some(reading.url.clone()),
            reading: reached,
            last_seen: reading.last_seen(),
            error,
        });
    }
    envs
}

/// The filters a matrix link can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateFilter {
    Stale,
    Behind,
    Held,
    Disagree,
    Canary,
}

impl StateFilter {
    const ALL: [StateFilter; 5] = [
        StateFilter::Disagree,
        StateFilter::Stale,
        StateFilter::Behind,
        StateFilter::Held,
        StateFilter::Canary,
    ];

    fn as_str(self) -> &'static str {
        self.flag().as_str()
    }

    fn flag(self) -> Flag {
        match self {
            StateFilter::Stale => Flag::Stale,
            StateFilter::Behind => Flag::Behind,
            StateFilter::Held => Flag::Held,
            StateFilter::Disagree => Flag::Disagree,
            StateFilter::Canary => Flag::Canary,
        }
    }

    fn parse(text: &str) -> Option<StateFilter> {
        StateFilter::ALL
            .into_iter()
            .find(|filter| filter.as_str() == text)
    }
}

/// `GET /ui`.
pub async fn page(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let session = match session::current(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return session::to_login(&uri.to_string()),
        Err(error) => return super::error_page(&error, None),
    };
    let query = uri.query();
    let template = match query_value(query, "template").filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => match TemplateName::parse(&text) {
            Ok(name) => Some(name),
            Err(err) => {
                return super::error_page(
                    &ApiError::new(Field::TemplateName.code(), format!("`template`: {err}")),
                    Some(&session),
                );
            }
        },
    };
    let filter = match query_value(query, "state").filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => match StateFilter::parse(&text) {
            Some(filter) => Some(filter),
            None => {
                return super::error_page(
                    &ApiError::new(
                        Code::InvalidRequest,
                        "`state` must be `disagree`, `stale`, `behind`, `held` or `canary`",
                    ),
                    Some(&session),
                );
            }
        },
    };
    let envs = environments(&state, &session.caller);
    let markup = render(
        &envs,
        template.as_ref(),
        filter,
        &session,
        crate::clock::now(),
    );
    html_page(StatusCode::OK, markup)
}

/// The whole page; also what the benchmark measures.
fn render(
    envs: &[Env],
    template: Option<&TemplateName>,
    filter: Option<StateFilter>,
    session: &Session,
    now: OffsetDateTime,
) -> Markup {
    let columns: Vec<Column> = envs.iter().map(Env::column).collect();
    let rows = matrix(&columns);
    // Rows by template, after the filters (a state filter keeps a template
    // when any of its rows has the flag).
    let mut templates: BTreeMap<&TemplateName, Vec<&Row<'_>>> = BTreeMap::new();
    for row in &rows {
        if template.is_some_and(|wanted| wanted != row.template) {
            continue;
        }
        templates.entry(row.template).or_default().push(row);
    }
    if let Some(filter) = filter {
        templates.retain(|_, rows| rows.iter().any(|row| row.flags.contains(&filter.flag())));
    }
    // Each environment's regions: those where it has a pin.
    let regions: Vec<Vec<&Region>> = (0..envs.len())
        .map(|index| {
            let set: BTreeSet<&Region> = rows
                .iter()
                .filter(|row| row.cells.get(index).copied().flatten().is_some())
                .map(|row| row.region)
                .collect();
            let mut ordered: Vec<&Region> = set.into_iter().collect();
            ordered.sort_by_key(|region| (region.as_str() != Region::GLOBAL, region.as_str()));
            ordered
        })
        .collect();
    let counts = flag_counts(&rows);
    let pin_indexes: Vec<Option<HashMap<(&str, &str), &Pin>>> = envs
        .iter()
        .map(|env| env.reading.as_deref().map(Environment::pin_index))
        .collect();
    let title = match template {
        Some(template) => format!("{template}: pins"),
        None => "The fleet at a glance".to_owned(),
    };
    layout(
        &title,
        Some(session),
        true,
        html! {
            h1 { (title) }
            (environment_list(envs, now))
            nav.filters aria-label="Filters" {
                "Show: "
                @if filter.is_none() && template.is_none() { strong { "all" } } @else { a href="/ui" { "all" } }
                @for candidate in StateFilter::ALL {
                    " · "
                    @let label = format!("{} ({})", candidate.as_str(), counts.get(&candidate.flag()).copied().unwrap_or(0));
                    @if filter == Some(candidate) { strong { (label) } }
                    @else { a href={ "/ui?state=" (candidate.as_str()) } { (label) } }
                }
                @if let Some(template) = template {
                    " · template " code { (template.as_str()) } " (" a href="/ui" { "clear" } ")"
                }
            }
            @if templates.is_empty() {
                p.empty { "No pins match." }
            } @else {
                div.scroll {
                    table.matrix {
                        caption { "Pinned digest per template, environment and region; " abbr title="the environments answer different digests" { "≠" } " marks a pin where environments disagree." }
                        thead {
                            tr {
                                th scope="col" rowspan="2" { "Template" }
                                @for (index, env) in envs.iter().enumerate() {
                                    @let span = regions.get(index).map_or(1, |regions| regions.len().max(1));
                                    th scope="colgroup" colspan=(span) class=(if env.reading.is_some() { "env" } else { "env unreachable" }) {
                                        (env.name)
                                        @if env.reading.is_none() { " (unreachable)" }
                                    }
                                }
                            }
                            tr {
                                @for (index, env) in envs.iter().enumerate() {
                                    @let env_regions = regions.get(index).map(Vec::as_slice).unwrap_or_default();
                                    @if env_regions.is_empty() {
                                        th scope="col" { @if env.reading.is_some() { "no pins" } @else { "?" } }
                                    }
                                    @for region in env_regions { th scope="col" { (region.as_str()) } }
                                }
                            }
                        }
                        tbody {
                            @for (name, template_rows) in &templates {
                                tr {
                                    th scope="row" { a href={ "/ui?template=" (name.as_str()) } { (name.as_str()) } }
                                    @for (index, env) in envs.iter().enumerate() {
                                        @let env_regions = regions.get(index).map(Vec::as_slice).unwrap_or_default();
                                        @if env_regions.is_empty() {
                                            td.none { @if env.reading.is_some() { "—" } @else { "unreachable" } }
                                        }
                                        @for region in env_regions {
                                            @let row = template_rows.iter().find(|row| row.region == *region).copied();
                                            @let pin = pin_indexes.get(index).and_then(Option::as_ref).and_then(|pins| pins.get(&(name.as_str(), region.as_str())).copied());
                                            (cell(env, pin, name, region, row, index, now))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// How many rows have each flag.
fn flag_counts(rows: &[Row<'_>]) -> BTreeMap<Flag, usize> {
    let mut counts = BTreeMap::new();
    for flag in rows.iter().flat_map(|row| &row.flags) {
        *counts.entry(*flag).or_insert(0) += 1;
    }
    counts
}

/// Which environments were read, and when each was last seen.
fn environment_list(envs: &[Env], now: OffsetDateTime) -> Markup {
    html! {
        ul.envs aria-label="Environments" {
            @for env in envs {
                li class=(if env.reading.is_some() { "reached" } else { "unreachable" }) {
                    strong { (env.name) }
                    @match (&env.url, &env.reading) {
                        (None, _) => { " (this server)" }
                        (Some(_), Some(_)) => { " reached" }
                        (Some(_), None) => {
                            " " strong.bad { "unreachable" }
                            ", last seen "
                            @match env.last_seen {
                                Some(at) => { (ago(at, now)) }
                                None => { "never" }
                            }
                            @if let Some(error) = &env.error { " (" (error) ")" }
                        }
                    }
                }
            }
        }
    }
}

/// `3m ago`, with the time itself as a tooltip.
fn ago(at: OffsetDateTime, now: OffsetDateTime) -> Markup {
    let full = at.format(&Rfc3339).unwrap_or_default();
    html! { time title=(full) { (age_text((now - at).whole_seconds())) " ago" } }
}

/// One environment's pin of one template and region.
fn cell(
    env: &Env,
    pin: Option<&Pin>,
    template: &TemplateName,
    region: &Region,
    row: Option<&Row<'_>>,
    index: usize,
    now: OffsetDateTime,
) -> Markup {
    let Some(row) = row else {
        return html! { td.none { "—" } };
    };
    let Some(cell) = row.cells.get(index).copied().flatten() else {
        // No pin of its own here: what a resolve answers instead.
        return match row.resolves.get(index).copied().flatten() {
            Some(fallback) => {
                html! { td.none { span title="no pin of its own: the global pin answers" { "(" code { (fallback.short()) } ")" } } }
            }
            None => html! { td.none { "—" } },
        };
    };
    let differs = row.flags.contains(&Flag::Disagree);
    let href = format!("/ui/pins/{}/{}", template.as_str(), region.as_str());
    html! {
        td class=(cell_class(cell, differs)) data-template=(template.as_str()) data-region=(region.as_str()) data-env=(env.name) {
            a.digest href=(href) title=(cell.digest.as_str()) { code { (cell.digest.short()) } }
            @if differs {
                " " a.differs href={ (href) "#environments" } title="environments disagree: compare them" { "≠ differs" }
            }
            @if let Some(pin) = pin {
                br;
                span.meta {
                    @if let Ok(at) = OffsetDateTime::parse(&pin.promoted_at, &Rfc3339) { (ago(at, now)) }
                    " by " (pin.promoted_by)
                    // Only http(s) links, whoever sent them (a peer's
                    // `javascript:` URL is shown as no link at all).
                    @match (&pin.git_sha, pin.ci_run_url.as_deref().filter(|run| pinion_core::RunUrl::parse(run).is_ok())) {
                        (Some(sha), Some(run)) => { " · " a href=(run) rel="noopener noreferrer" title="its CI run" { code { (sha.get(..7).unwrap_or(sha)) } } }
                        (Some(sha), None) => { " · " code { (sha.get(..7).unwrap_or(sha)) } }
                        (None, Some(run)) => { " · " a href=(run) rel="noopener noreferrer" { "CI run" } }
                        (None, None) => {}
                    }
                }
            }
            br;
            span class={ "drift " (cell.drift.as_str()) } { (drift_words(cell.drift)) }
            @if let Some((counts, convergence)) = cell.fleet {
                " · "
                span class={ "fleet " (convergence.as_str()) } {
                    "fleet " (counts.current) "/" (counts.live())
                    @if counts.behind > 0 { ", " (counts.behind) " behind" }
                    @if counts.unknown > 0 { ", " (counts.unknown) " unknown" }
                    @if convergence == Convergence::Stalled { " — stalled" }
                }
            }
            @if cell.held {
                " · " span.held title=(pin.and_then(|pin| pin.hold.as_ref()).map_or(String::new(), |hold| format!("held by {}: {}", hold.held_by, hold.reason))) { "held" }
            }
            @if let Some((canary, percent)) = &cell.canary {
                " · " span.canary { "canary " (percent) "% → " code { (canary.short()) } }
            }
        }
    }
}

fn cell_class(cell: &Cell, differs: bool) -> String {
    let mut class = String::from("pin");
    if differs {
        class.push_str(" differs");
    }
    if cell.drift == DriftMark::Stale {
        class.push_str(" stale");
    }
    if cell.held {
        class.push_str(" is-held");
    }
    class
}

/// What the drift watcher said, in words.
pub(super) fn drift_words(mark: DriftMark) -> &'static str {
    match mark {
        DriftMark::Fresh => "fresh",
        DriftMark::Stale => "⚠ stale",
        DriftMark::Unknown => "drift unknown",
        DriftMark::Unchecked => "not checked",
    }
}
