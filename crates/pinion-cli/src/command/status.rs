//! `pinion status`: every pin of every target side by side, with its age,
//! who moved it, what the server's drift watcher and fleet say of it, and
//! what needs attention. It reads only the servers' state, so it needs no
//! registry credentials. Exit 0, or 1 when something is stale, behind or
//! disagrees, or 2 when a target could not be read.

use std::sync::Arc;

use pinion_api::status::Environment;
use pinion_api::{DriftReport, FleetList, Pin, PinList};
use pinion_core::Convergence;
use pinion_core::status::{Column, Flag, Row, matrix};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::connect;
use crate::ExitCode;
use crate::cli::{Format, StatusArgs};
use crate::client::Client;
use crate::output;
use crate::report;
use crate::target::Target;

/// What one target's server said, or why it could not be read.
struct Read {
    name: String,
    url: String,
    state: Result<Environment, String>,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let format = args.remote.access.format;
    let (targets, client) = match connect(&args.remote) {
        Ok(connected) => connected,
        Err(preflight) => return report::preflight_failed("status", &preflight),
    };
    let reads = read_all(targets, client).await;
    let now = OffsetDateTime::now_utc();
    let columns: Vec<Column> = reads.iter().map(column).collect();
    let rows = matrix(&columns);
    let unreachable = reads.iter().any(|read| read.state.is_err());
    let failing = rows
        .iter()
        .any(|row| row.flags.iter().any(|flag| flag.fails()));
    match format {
        Format::Json => {
            output::json(&document(&reads, &rows, now, !unreachable && !failing));
        }
        Format::Human => {
            for line in table(&reads, &rows, now, width()) {
                if !output::line(&line) {
                    break;
                }
            }
        }
    }
    for read in &reads {
        if let Err(reason) = &read.state {
            eprintln!("error: {}: {reason}", read.name);
        }
    }
    if unreachable {
        ExitCode::Error
    } else if failing {
        ExitCode::No
    } else {
        ExitCode::Success
    }
}

/// Reads every target at once: an unreachable one costs one timeout, not
/// one per target.
async fn read_all(targets: Vec<Target>, client: Client) -> Vec<Read> {
    let client = Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    let count = targets.len();
    for (index, target) in targets.into_iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let state = read(&client, &target).await;
            (
                index,
                Read {
                    name: target.name.clone(),
                    url: target.base.to_string(),
                    state,
                },
            )
        });
    }
    let mut reads: Vec<Option<Read>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, read)) = joined {
            if let Some(slot) = reads.get_mut(index) {
                *slot = Some(read);
            }
        }
    }
    reads.into_iter().flatten().collect()
}

async fn read(client: &Client, target: &Target) -> Result<Environment, String> {
    let (pins, drift, fleet) = tokio::join!(
        client.get_json::<PinList>(target, "cp/admin/runtime-image"),
        client.get_json::<DriftReport>(target, "cp/admin/runtime-image/drift"),
        client.get_json::<FleetList>(target, "cp/fleet"),
    );
    Ok(Environment {
        pins: pins.map_err(|err| err.to_string())?.pins,
        drift: drift.map_err(|err| err.to_string())?,
        fleet: fleet.map_err(|err| err.to_string())?.fleet,
    })
}

/// A target's pins as the status matrix takes them.
fn column(read: &Read) -> Column {
    match &read.state {
        Ok(environment) => environment.column(),
        Err(_) => Column::Unreachable,
    }
}

/// The terminal's width: `COLUMNS`, else none (no limit: a pipe or a file
/// gets the wide table).
fn width() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|columns| columns.trim().parse().ok())
        .filter(|&columns: &usize| columns > 0)
}

/// The pin of one target for a row: what the server sent.
fn pin_of<'r>(reads: &'r [Read], target: usize, row: &Row<'_>) -> Option<&'r Pin> {
    let state = reads.get(target)?.state.as_ref().ok()?;
    state
        .pins
        .iter()
        .find(|pin| pin.template_name == row.template.as_str() && pin.region == row.region.as_str())
}

/// `5s`, `3m`, `2h`, `4d`.
fn age(promoted_at: &str, now: OffsetDateTime) -> Option<(i64, String)> {
    let at = OffsetDateTime::parse(promoted_at, &Rfc3339).ok()?;
    let seconds = (now - at).whole_seconds().max(0);
    Some((seconds, pinion_core::status::age_text(seconds)))
}

/// The words of one cell: digest (with hold and canary), age, who, drift,
/// fleet.
fn words(reads: &[Read], target: usize, row: &Row<'_>, now: OffsetDateTime) -> [String; 5] {
    let unreachable = reads.get(target).is_some_and(|read| read.state.is_err());
    let cell = row.cells.get(target).copied().flatten();
    match (pin_of(reads, target, row), cell) {
        (Some(pin), Some(cell)) => {
            let mut digest = cell.digest.short().to_owned();
            if cell.held {
                digest.push_str(" held");
            }
            if let Some((canary, percent)) = &cell.canary {
                digest.push_str(&format!(" +{percent}% {}", canary.short()));
            }
            let fleet = match cell.fleet {
                None => "-".to_owned(),
                Some((counts, state)) => {
                    let mut text = format!("{}/{}", counts.current, counts.live());
                    if counts.unknown > 0 {
                        text.push_str(&format!(" ?{}", counts.unknown));
                    }
                    if state == Convergence::Stalled {
                        text.push_str(" stalled");
                    }
                    text
                }
            };
            [
                digest,
                age(&pin.promoted_at, now).map_or("?".into(), |(_, text)| text),
                pin.promoted_by.clone(),
                cell.drift.as_str().to_owned(),
                fleet,
            ]
        }
        _ if unreachable => ["?".into(), "?".into(), "?".into(), "?".into(), "?".into()],
        _ => {
            // No pin of its own: what a resolve there answers instead.
            let digest = match row.resolves.get(target).copied().flatten() {
                Some(global) => format!("({})", global.short()),
                None => "-".to_owned(),
            };
            [digest, "-".into(), "-".into(), "-".into(), "-".into()]
        }
    }
}

fn flags(row: &Row<'_>) -> String {
    let flags: Vec<&str> = row.flags.iter().map(|flag| flag.as_str()).collect();
    if flags.is_empty() {
        "ok".to_owned()
    } else {
        flags.join(",")
    }
}

/// The matrix as text: one wide table, or, when it does not fit `width`,
/// one block per pin.
fn table(
    reads: &[Read],
    rows: &[Row<'_>],
    now: OffsetDateTime,
    width: Option<usize>,
) -> Vec<String> {
    const FIELDS: [&str; 5] = ["digest", "age", "by", "drift", "fleet"];
    let mut header = vec!["template".to_owned(), "region".to_owned()];
    for read in reads {
        for field in FIELDS {
            header.push(format!("{}:{field}", read.name));
        }
    }
    header.push("flags".to_owned());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut line = vec![row.template.to_string(), row.region.to_string()];
            for target in 0..reads.len() {
                line.extend(words(reads, target, row, now));
            }
            line.push(flags(row));
            line
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for line in &body {
        for (at, cell) in line.iter().enumerate() {
            if let Some(width) = widths.get_mut(at) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    let mut out = Vec::new();
    for read in reads {
        if let Err(reason) = &read.state {
            out.push(format!(
                "{} ({}): unreachable: {reason}",
                read.name, read.url
            ));
        }
    }
    if width.is_some_and(|width| total > width) {
        // Narrow: a block per pin, a line per target.
        let name_width = reads
            .iter()
            .map(|read| read.name.chars().count())
            .max()
            .unwrap_or(0);
        for (row, line) in rows.iter().zip(&body) {
            out.push(format!("{}/{}  [{}]", row.template, row.region, flags(row)));
            // The line's cells after template and region, five per target.
            for (read, cells) in reads.iter().zip(line[2..].chunks(FIELDS.len())) {
                if let [digest, age, by, drift, fleet] = cells {
                    out.push(format!(
                        "  {:name_width$}  {digest}  {age}  {by}  {drift}  fleet {fleet}",
                        read.name
                    ));
                }
            }
        }
        if rows.is_empty() {
            out.push("no pins".to_owned());
        }
        return out;
    }
    let render = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    out.push(render(&header));
    for line in &body {
        out.push(render(line));
    }
    if rows.is_empty() {
        out.push("no pins".to_owned());
    }
    out
}

/// The matrix as one JSON document.
fn document(reads: &[Read], rows: &[Row<'_>], now: OffsetDateTime, ok: bool) -> Value {
    let targets: Vec<Value> = reads
        .iter()
        .map(|read| {
            json!({
                "name": read.name,
                "url": read.url,
                "reachable": read.state.is_ok(),
                "error": read.state.as_ref().err(),
                "drift_checked_at": read.state.as_ref().ok().and_then(|state| state.drift.checked_at.clone()),
            })
        })
        .collect();
    let pins: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut cells = serde_json::Map::new();
            let mut resolves = serde_json::Map::new();
            for (target, read) in reads.iter().enumerate() {
                let cell = match (pin_of(reads, target, row), row.cells.get(target).copied().flatten()) {
                    (Some(pin), Some(cell)) => json!({
                        "image_digest": pin.image_digest,
                        "promoted_at": pin.promoted_at,
                        "promoted_by": pin.promoted_by,
                        "age_seconds": age(&pin.promoted_at, now).map(|(seconds, _)| seconds),
                        "git_sha": pin.git_sha,
                        "drift": cell.drift.as_str(),
                        "fleet": cell.fleet.map(|(counts, state)| json!({
                            "current": counts.current,
                            "behind": counts.behind,
                            "unknown": counts.unknown,
                            "state": state.as_str(),
                        })),
                        "hold": pin.hold,
                        "canary": pin.canary,
                    }),
                    _ => Value::Null,
                };
                cells.insert(read.name.clone(), cell);
                resolves.insert(
                    read.name.clone(),
                    row.resolves
                        .get(target)
                        .copied()
                        .flatten()
                        .map_or(Value::Null, |digest| Value::String(digest.to_string())),
                );
            }
            json!({
                "template_name": row.template.as_str(),
                "region": row.region.as_str(),
                "flags": row.flags.iter().map(|flag| flag.as_str()).collect::<Vec<_>>(),
                "attention": row.flags.iter().any(|flag| flag.fails() || *flag == Flag::Unreachable),
                "targets": cells,
                "resolves": resolves,
            })
        })
        .collect();
    json!({ "ok": ok, "targets": targets, "pins": pins })
}
