//! `pinion verify`: read every target's pin back; green only if each has the
//! exact (template, region) row at the digest.

use pinion_api::Pin;
use pinion_core::{Digest, Region, TemplateName};

use std::io::IsTerminal;
use std::time::Duration;

use super::{connect, flag, parse_duration};
use crate::ExitCode;
use crate::cli::VerifyArgs;
use crate::client::{Client, ClientError};
use crate::report::{self, FleetCounts, GateCommand, Outcome, Subject, TargetReport};
use crate::target::{Preflight, Target};

pub async fn run(args: VerifyArgs) -> ExitCode {
    let parsed = (|| {
        Ok::<_, String>((
            flag("--template", TemplateName::parse(&args.pin.template))?,
            flag("--region", Region::parse(&args.pin.region))?,
            flag("--digest", Digest::parse(&args.pin.digest))?,
        ))
    })();
    let wait = match parse_duration(&args.wait) {
        Ok(wait) => wait,
        Err(err) => {
            return report::preflight_failed(
                "verify",
                &Preflight::general(format!("--wait: {err}")),
            );
        }
    };
    let give_up = tokio::time::Instant::now() + wait;
    let prepared = parsed
        .map_err(Preflight::general)
        .and_then(|pin| Ok((pin, connect(&args.remote)?)));
    let ((template, region, digest), (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("verify", &preflight),
    };
    let mut reports = Vec::new();
    for target in &targets {
        let checked = client
            .list_pins(target, &template, &region)
            .await
            .and_then(|pins| the_row(pins, &template, &region));
        reports.push(match checked {
            Ok(Some(pin)) if pin.image_digest == digest.as_str() => match args.converged {
                None => TargetReport::checked(target, Outcome::Match, Some(pin), None),
                Some(percent) => {
                    match converged(&client, target, &template, &region, percent, give_up).await {
                        Ok((true, fleet)) => {
                            let mut report =
                                TargetReport::checked(target, Outcome::Match, Some(pin), None);
                            report.fleet = Some(fleet);
                            report
                        }
                        Ok((false, fleet)) => {
                            let error = format!(
                                "the fleet of `{template}`/`{region}` did not reach {percent}% within {}: {}",
                                args.wait,
                                fleet.describe()
                            );
                            let mut report = TargetReport::checked(
                                target,
                                Outcome::NotConverged,
                                Some(pin),
                                Some(error),
                            );
                            report.fleet = Some(fleet);
                            report
                        }
                        Err(err) => TargetReport::failed(target, &err),
                    }
                }
            },
            Ok(Some(pin)) => {
                let error = format!(
                    "pin for `{template}`/`{region}` is `{}`, expected `{digest}`",
                    pin.image_digest
                );
                TargetReport::checked(target, Outcome::Mismatch, Some(pin), Some(error))
            }
            Ok(None) => {
                let error = format!("no pin for `{template}`/`{region}`");
                TargetReport::checked(target, Outcome::Missing, None, Some(error))
            }
            Err(err) => TargetReport::failed(target, &err),
        });
    }
    let subject = Subject {
        command: GateCommand::Verify,
        template: &template,
        region: &region,
        digest: Some(&digest),
    };
    report::finish(&subject, reports, args.remote.access.format)
}

/// Waits, polling with backoff, until at least `percent` of the live
/// instances the pin governs run its digest (one at least), or until
/// `give_up`. Progress goes to stderr: one line rewritten in a terminal,
/// a line per change elsewhere (CI logs). Returns whether it got there, and
/// the last counts.
async fn converged(
    client: &Client,
    target: &Target,
    template: &TemplateName,
    region: &Region,
    percent: u8,
    give_up: tokio::time::Instant,
) -> Result<(bool, FleetCounts), ClientError> {
    let terminal = std::io::stderr().is_terminal();
    let mut pause = Duration::from_millis(250);
    let mut last_shown = None;
    loop {
        let entries = client.fleet(target, template, region).await?;
        let entry = entries.iter().find(|entry| {
            entry.template_name == template.as_str() && entry.region == region.as_str()
        });
        let (current, behind, unknown) = entry.map_or((0, 0, 0), |entry| {
            (entry.current, entry.behind, entry.unknown)
        });
        let live = current + behind;
        let fleet = FleetCounts {
            current,
            behind,
            unknown,
            percent: (current * 100).checked_div(live).unwrap_or(0),
        };
        let reached = pinion_core::FleetCounts {
            current,
            behind,
            unknown,
        }
        .reached(percent);
        let line = format!(
            "{}: waiting for {percent}% of `{template}`/`{region}`: {}",
            target.name,
            fleet.describe()
        );
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else if last_shown.as_ref() != Some(&line) {
            eprintln!("{line}");
        }
        last_shown = Some(line);
        let now = tokio::time::Instant::now();
        if reached || now >= give_up {
            if terminal {
                eprintln!();
            }
            return Ok((reached, fleet));
        }
        tokio::time::sleep(pause.min(give_up - now)).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
}

/// The one row of (template, region) in a list answer. Two rows for the same
/// pin is an answer that cannot be trusted, not a choice of the first.
fn the_row(
    pins: Vec<Pin>,
    template: &TemplateName,
    region: &Region,
) -> Result<Option<Pin>, ClientError> {
    let mut rows = pins
        .into_iter()
        .filter(|pin| pin.template_name == template.as_str() && pin.region == region.as_str());
    let first = rows.next();
    if rows.next().is_some() {
        return Err(ClientError::Protocol(format!(
            "server answered a pin list with several rows for `{template}`/`{region}`"
        )));
    }
    Ok(first)
}
