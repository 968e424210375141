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
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP pinion_build_info The running build\n# TYPE pinion_build_info gauge\npinion_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // Every pin has its series from the first scrape. A pin whose last
    // check could not be made (registry down, tag missing, no repository,
    // not checked yet, or checked before the pin moved) has
    // `pinion_pin_check_ok` 0 and keeps its last known staleness, or NaN
    // when it has none: never a 0 that reads as fresh.
    let pins: Vec<&pinion_store::PinRecord> = view
        .pins()
        .filter(|pin| visible(pin.template.as_str()))
        .collect();
    let checks: Vec<(bool, Option<bool>)> = pins
        .iter()
        .map(|pin| {
            let checked = report.pins.iter().find(|entry| {
                entry.template_name == pin.template.as_str()
                    && entry.region == pin.region.as_str()
                    && entry.image_digest.as_deref() == Some(pin.digest.as_str())
                    && matches!(entry.status.as_str(), "current" | "stale")
            });
            match checked {
                Some(entry) => (true, Some(entry.status == "stale")),
                None => (
                    false,
                    drift.last_known(&pin.template, &pin.region, &pin.digest),
                ),
            }
        })
        .collect();
    let _ = writeln!(
        text,
        "# HELP pinion_pin_stale 1 when the pin differs from its repository's `{}` tag (its last known value while checks fail; NaN when never known)",
        report.tag
    );
    let _ = writeln!(text, "# TYPE pinion_pin_stale gauge");
    for (pin, (_, stale)) in pins.iter().zip(&checks) {
        let value = stale.map_or("NaN", |stale| if stale { "1" } else { "0" });
        let _ = writeln!(
            text,
            "pinion_pin_stale{{template=\"{}\",region=\"{}\"}} {value}",
            pin.template, pin.region
        );
    }
    let _ = writeln!(
        text,
        "# HELP pinion_pin_check_ok 1 when the last drift check of the pin was made; 0 when it could not be"
    );
    let _ = writeln!(text, "# TYPE pinion_pin_check_ok gauge");
    for (pin, (ok, _)) in pins.iter().zip(&checks) {
        let _ = writeln!(
            text,
            "pinion_pin_check_ok{{template=\"{}\",region=\"{}\"}} {}",
            pin.template,
            pin.region,
            u8::from(*ok)
        );
    }
    let _ = writeln!(
        text,
        "# HELP pinion_pin_info The digest each pin is at\n# TYPE pinion_pin_info gauge"
    );
    for pin in &pins {
        let _ = writeln!(
            text,
            "pinion_pin_info{{template=\"{}\",region=\"{}\",digest=\"{}\"}} 1",
            pin.template, pin.region, pin.digest
        );
    }
    let _ = writeln!(
        text,
        "# HELP pinion_pin_promoted_timestamp_seconds When the pin last moved (Unix seconds)\n# TYPE pinion_pin_promoted_timestamp_seconds gauge"
    );
    for pin in &pins {
        let at = pin.promoted_at.unix_timestamp_nanos() as f64 / 1e9;
        let _ = writeln!(
            text,
            "pinion_pin_promoted_timestamp_seconds{{template=\"{}\",region=\"{}\"}} {at:.3}",
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
    let _ = writeln!(text, "pinion_pins {}", pins.len());
    let _ = writeln!(
        text,
        "# HELP pinion_auth_failures_total Requests refused for want of a valid token, by reason (`throttled`: answered 429 without a look)"
    );
    let _ = writeln!(text, "# TYPE pinion_auth_failures_total counter");
    for (reason, total) in state.auth_failures().totals() {
        let _ = writeln!(
            text,
            "pinion_auth_failures_total{{reason=\"{}\"}} {total}",
            reason.as_str()
        );
    }
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
    // The fleet's caps: what it holds against them, in total and per
    // reporting token (a restricted caller sees neither: other tokens'
    // names are not its business).
    if caller
        .as_ref()
        .is_none_or(|caller| caller.templates().is_none())
    {
        let (held, by_token) = state.fleet().held();
        let limits = (
            state.settings().fleet_max_instances,
            state.settings().fleet_max_instances_per_token,
        );
        gauge(
            &mut text,
            "pinion_fleet_instances_held",
            "Instances the fleet holds (live and silent, not yet forgotten), against --fleet-max-instances",
            held,
        );
        gauge(
            &mut text,
            "pinion_fleet_instances_max",
            "The most instances the fleet holds (--fleet-max-instances)",
            limits.0,
        );
        if let Some(per_token) = limits.1 {
            gauge(
                &mut text,
                "pinion_fleet_instances_per_token_max",
                "The most instances one token may have in the fleet (--fleet-max-instances-per-token)",
                per_token,
            );
        }
        let _ = writeln!(
            text,
            "# HELP pinion_fleet_instances_by_token Instances the fleet holds, by the token that last reported them"
        );
        let _ = writeln!(text, "# TYPE pinion_fleet_instances_by_token gauge");
        for (token, count) in by_token {
            let _ = writeln!(
                text,
                "pinion_fleet_instances_by_token{{token=\"{token}\"}} {count}"
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
    // Routes, not templates: the same for every caller.
    state.http_metrics().render(&mut text);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// One gauge without labels, with its help and type lines.
fn gauge(text: &mut String, name: &str, help: &str, value: usize) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} gauge");
    let _ = writeln!(text, "{name} {value}");
}
