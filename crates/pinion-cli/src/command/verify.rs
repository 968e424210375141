//! `pinion verify`: read every target's pin back; green only if each has the
//! exact (template, region) row at the digest.

use pinion_api::Pin;
use pinion_core::{Digest, Region, TemplateName};

use super::{connect, flag};
use crate::ExitCode;
use crate::cli::VerifyArgs;
use crate::client::ClientError;
use crate::report::{self, GateCommand, Outcome, Subject, TargetReport};
use crate::target::Preflight;

pub async fn run(args: VerifyArgs) -> ExitCode {
    let parsed = (|| {
        Ok::<_, String>((
            flag("--template", TemplateName::parse(&args.pin.template))?,
            flag("--region", Region::parse(&args.pin.region))?,
            flag("--digest", Digest::parse(&args.pin.digest))?,
        ))
    })();
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
            Ok(Some(pin)) if pin.image_digest == digest.as_str() => {
                TargetReport::checked(target, Outcome::Match, Some(pin), None)
            }
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
