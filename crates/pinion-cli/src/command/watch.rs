//! `pinion watch`: follows the change feed and prints each event as it
//! happens. When the stream drops (the server restarts, a proxy times out,
//! the reader fell behind) it reconnects with backoff and resumes after the
//! last event it printed, so none is skipped or printed twice. Refusals that
//! retrying cannot fix (a bad token, events no longer kept) end it: exit 2.

use std::time::Duration;

use pinion_api::Event;
use pinion_core::{EventType, TemplateName};

use super::{connect, optional_flag};
use crate::ExitCode;
use crate::cli::{Format, WatchArgs};
use crate::client::ClientError;
use crate::output;
use crate::report;
use crate::sse::Message;
use crate::target::Preflight;

/// The longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub async fn run(args: WatchArgs) -> ExitCode {
    let remote = args.remote.to_remote();
    let parsed = (|| {
        let template = optional_flag("--template", args.template.as_deref(), TemplateName::parse)?;
        let types = args
            .types
            .iter()
            .map(|kind| EventType::parse(kind).map_err(|err| format!("--type: {err}")))
            .collect::<Result<Vec<_>, _>>()?;
        if args.after.is_some_and(|after| after < 0) {
            return Err("--after must be an event id, 0 or more".to_owned());
        }
        Ok((template, types))
    })();
    let prepared = parsed
        .map_err(Preflight::general)
        .and_then(|filters| Ok((filters, connect(&remote)?)));
    let ((template, types), (mut targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("watch", &preflight),
    };
    let Some(target) = targets.pop() else {
        return report::preflight_failed("watch", &Preflight::general("no target"));
    };
    let format = remote.access.format;
    let mut last = args.after;
    let mut backoff = Duration::from_millis(500);
    loop {
        match client
            .stream_events(&target, template.as_ref(), &types, last)
            .await
        {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(messages)) => {
                        for message in messages {
                            match message {
                                Message::Event { id, data, .. } => {
                                    if !print(&data, format) {
                                        return ExitCode::Success;
                                    }
                                    if let Some(id) = id.and_then(|id| id.parse().ok()) {
                                        last = Some(id);
                                    }
                                    backoff = Duration::from_millis(500);
                                }
                                Message::Comment(comment)
                                    if comment.starts_with("disconnected") =>
                                {
                                    eprintln!("warning: {}: {comment}", target.name);
                                }
                                Message::Comment(_) => {}
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        eprintln!("warning: {}: the stream broke: {err}", target.name);
                        break;
                    }
                }
            },
            Err(
                err @ ClientError::Refused {
                    status: 400 | 401 | 403 | 404 | 410 | 422,
                    ..
                },
            ) => {
                eprintln!("error: {}: {err}", target.name);
                return ExitCode::Error;
            }
            Err(err) => eprintln!("warning: {}: {err}", target.name),
        }
        let resume = last.map_or_else(|| "now".to_owned(), |id| format!("after event {id}"));
        eprintln!(
            "warning: {}: reconnecting in {:.1}s, resuming {resume}",
            target.name,
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Prints an event; false once stdout is closed.
fn print(data: &str, format: Format) -> bool {
    match format {
        // The event's JSON, as the server sent it, one per line.
        Format::Json => output::line(data),
        Format::Human => match serde_json::from_str::<Event>(data) {
            Ok(event) => output::line(&human(&event)),
            Err(_) => output::line(data),
        },
    }
}

/// `<at>  <type>  <template>/<region>  <what>`.
fn human(event: &Event) -> String {
    use pinion_api::events::{
        CanaryAborted, CanaryPromoted, CanaryStarted, FleetState, PinDrift, PinHeld, PinMoved,
        PinReleased,
    };
    fn short(digest: &str) -> String {
        digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect()
    }
    /// The event's data as its type's payload; `None` when it does not
    /// decode as one (a newer server's type, or a changed shape).
    fn typed<T: serde::de::DeserializeOwned>(data: &serde_json::Value) -> Option<T> {
        serde_json::from_value(data.clone()).ok()
    }
    let data = &event.data;
    let what = match event.kind.as_str() {
        "pin.promoted" | "pin.rolled_back" => typed::<PinMoved>(data).map(|moved| {
            format!(
                "{} -> {} by {}",
                moved
                    .from_digest
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), short),
                short(&moved.to_digest),
                moved.actor
            )
        }),
        "pin.stale" | "pin.fresh" => typed::<PinDrift>(data).map(|drift| {
            format!(
                "pin {} tag {} {}",
                short(&drift.image_digest),
                drift.tag,
                short(&drift.tag_digest)
            )
        }),
        "pin.held" => {
            typed::<PinHeld>(data).map(|held| format!("held by {}: {}", held.actor, held.reason))
        }
        "pin.released" => typed::<PinReleased>(data).map(|released| {
            format!(
                "released by {} (held by {})",
                released.actor, released.held_by
            )
        }),
        "canary.started" => typed::<CanaryStarted>(data).map(|canary| {
            format!(
                "canary {} at {}% by {}",
                short(&canary.image_digest),
                canary.percent,
                canary.actor
            )
        }),
        "canary.aborted" => typed::<CanaryAborted>(data).map(|canary| {
            format!(
                "canary {} aborted ({}) by {}",
                short(&canary.image_digest),
                canary.cause,
                canary.actor
            )
        }),
        "canary.promoted" => typed::<CanaryPromoted>(data).map(|canary| {
            format!(
                "canary {} promoted by {}",
                short(&canary.image_digest),
                canary.actor
            )
        }),
        "fleet.converged" | "fleet.stalled" => typed::<FleetState>(data).map(|fleet| {
            format!(
                "{} current {} behind {} unknown {}",
                short(&fleet.image_digest),
                fleet.current,
                fleet.behind,
                fleet.unknown
            )
        }),
        _ => None,
    }
    .unwrap_or_else(|| data.to_string());
    let place = match (&event.template_name, &event.region) {
        (Some(template), Some(region)) => format!("{template}/{region}"),
        (Some(template), None) => template.clone(),
        _ => "-".to_owned(),
    };
    format!(
        "{}  #{}  {}  {place}  {what}",
        event.at, event.id, event.kind
    )
}
