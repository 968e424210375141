//! What the watcher saw: the drift report and Prometheus metrics.

use std::fmt::Write as _;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use pinion_api::DriftReport;
use pinion_core::Scope;
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn drift(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<DriftReport>, ApiError> {
    caller.require(Scope::Read)?;
    let report = state.drift().report();
    let mut visible = (*report).clone();
    visible.pins.retain(|entry| {
        pinion_core::TemplateName::parse(&entry.template_name)
            .is_ok_and(|name| caller.may_use(&name))
    });
    Ok(Json(visible))
}

/// Prometheus text format. Unauthenticated by default, like `/healthz`: it
/// holds template and region names and ages, never a digest or a secret.
/// With `--metrics-token-required` it takes a token of scope `read`, and a
/// template-restricted token sees only its templates' series.
pub async fn metrics(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let caller = if state.settings().metrics_token_required {
        let caller = Caller::authenticate(&parts, &state)?;
        caller.require(Scope::Read)?;
        Some(caller)
    } else {
        None
    };
    let visible = |template: &str| {
        caller.as_ref().is_none_or(|caller| {
            caller.templates().is_none()
                || pinion_core::TemplateName::parse(template)
                    .is_ok_and(|name| caller.may_use(&name))
        })
    };
    let view = state.view();
    let drift = state.drift();
    let report = drift.report();
    let now = OffsetDateTime::now_utc();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP pinion_pin_stale 1 when the pin differs from its repository's `{}` tag",
        report.tag
    );
    let _ = writeln!(text, "# TYPE pinion_pin_stale gauge");
    for entry in report
        .pins
        .iter()
        .filter(|entry| entry.image_digest.is_some() && visible(&entry.template_name))
    {
        let stale = u8::from(entry.status == "stale");
        let _ = writeln!(
            text,
            "pinion_pin_stale{{template=\"{}\",region=\"{}\"}} {stale}",
            entry.template_name, entry.region
        );
    }
    let _ = writeln!(
        text,
        "# HELP pinion_pin_age_seconds Seconds since the pin last moved"
    );
    let _ = writeln!(text, "# TYPE pinion_pin_age_seconds gauge");
    for pin in view.pins().filter(|pin| visible(pin.template.as_str())) {
        let age = (now - pin.promoted_at).as_seconds_f64().max(0.0);
        let _ = writeln!(
            text,
            "pinion_pin_age_seconds{{template=\"{}\",region=\"{}\"}} {age:.3}",
            pin.template, pin.region
        );
    }
    let _ = writeln!(
        text,
        "# HELP pinion_drift_check_errors_total Registry lookups of the drift watcher that failed"
    );
    let _ = writeln!(text, "# TYPE pinion_drift_check_errors_total counter");
    let _ = writeln!(
        text,
        "pinion_drift_check_errors_total {}",
        drift.errors_total()
    );
    let _ = writeln!(
        text,
        "# HELP pinion_drift_last_check_timestamp_seconds When the drift watcher last finished a pass"
    );
    let _ = writeln!(
        text,
        "# TYPE pinion_drift_last_check_timestamp_seconds gauge"
    );
    let last = report
        .checked_at
        .as_deref()
        .and_then(|at| {
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, OffsetDateTime::unix_timestamp);
    let _ = writeln!(text, "pinion_drift_last_check_timestamp_seconds {last}");
    let _ = writeln!(text, "# HELP pinion_pins Pins in the store");
    let _ = writeln!(text, "# TYPE pinion_pins gauge");
    let pins = view
        .pins()
        .filter(|pin| visible(pin.template.as_str()))
        .count();
    let _ = writeln!(text, "pinion_pins {pins}");
    let _ = writeln!(
        text,
        "# HELP pinion_auth_failures_total Requests refused for want of a valid token, by reason (`throttled`: answered 429 without a look)"
    );
    let _ = writeln!(text, "# TYPE pinion_auth_failures_total counter");
    let _ = writeln!(
        text,
        "# HELP pinion_fleet_instances Instances each pin governs, by state against it (`unknown`: silent past their time to live)"
    );
    let _ = writeln!(text, "# TYPE pinion_fleet_instances gauge");
    let summary = state.fleet().summary();
    for entry in summary
        .pins
        .values()
        .filter(|entry| visible(entry.template.as_str()))
    {
        for (name, count) in [
            ("current", entry.counts.current),
            ("behind", entry.counts.behind),
            ("unknown", entry.counts.unknown),
        ] {
            let _ = writeln!(
                text,
                "pinion_fleet_instances{{template=\"{}\",region=\"{}\",state=\"{name}\"}} {count}",
                entry.template, entry.region
            );
        }
    }
    let feed = state.feed();
    let _ = writeln!(
        text,
        "# HELP pinion_events_head The newest event id this server has read from the change feed"
    );
    let _ = writeln!(text, "# TYPE pinion_events_head gauge");
    let _ = writeln!(text, "pinion_events_head {}", feed.head());
    let _ = writeln!(
        text,
        "# HELP pinion_event_subscribers Server-Sent Events streams open on this server"
    );
    let _ = writeln!(text, "# TYPE pinion_event_subscribers gauge");
    let _ = writeln!(text, "pinion_event_subscribers {}", feed.subscribers());
    for (reason, total) in state.auth_failures().totals() {
        let _ = writeln!(
            text,
            "pinion_auth_failures_total{{reason=\"{}\"}} {total}",
            reason.as_str()
        );
    }
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}
