//! `pinion rollback`: move a pin back, by default to the digest before.

use pinion_api::RollbackRequest;
use pinion_core::{Digest, HoldReason, Notes, Region, TemplateName};

use super::{connect, flag, optional_flag};
use crate::ExitCode;
use crate::cli::RollbackArgs;
use crate::client::ClientError;
use crate::report::{self, GateCommand, Subject, TargetReport};
use crate::target::Preflight;

struct Rollback {
    template: TemplateName,
    region: Region,
    to: Option<Digest>,
    notes: Option<Notes>,
    hold: bool,
    reason: Option<HoldReason>,
}

impl Rollback {
    fn parse(args: &RollbackArgs) -> Result<Rollback, String> {
        Ok(Rollback {
            template: flag("--template", TemplateName::parse(&args.template))?,
            region: flag("--region", Region::parse(&args.region))?,
            to: optional_flag("--to", args.to.as_deref(), Digest::parse)?,
            notes: optional_flag("--notes", args.notes.as_deref(), Notes::parse)?,
            hold: args.hold,
            reason: optional_flag("--reason", args.reason.as_deref(), HoldReason::parse)?,
        })
    }

    fn request(&self) -> RollbackRequest {
        RollbackRequest {
            template_name: self.template.to_string(),
            region: Some(self.region.to_string()),
            to_digest: self.to.as_ref().map(ToString::to_string),
            notes: self.notes.as_ref().map(|notes| notes.as_str().to_owned()),
            hold: self.hold,
            reason: self
                .reason
                .as_ref()
                .map(|reason| reason.as_str().to_owned()),
        }
    }
}

pub async fn run(args: RollbackArgs) -> ExitCode {
    let prepared = Rollback::parse(&args)
        .map_err(Preflight::general)
        .and_then(|rollback| Ok((rollback, connect(&args.remote)?)));
    let (rollback, (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("rollback", &preflight),
    };
    let request = rollback.request();
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(match client.rollback(target, &request).await {
            Ok(moved) if rollback.hold && moved.pin.hold.is_none() => TargetReport::failed(
                target,
                &ClientError::Protocol(
                    "the server moved the pin but did not hold it (does it know holds?)".into(),
                ),
            ),
            Ok(moved) => TargetReport::written(target, moved),
            Err(err) => TargetReport::failed(target, &err),
        });
    }
    let subject = Subject {
        command: GateCommand::Rollback,
        template: &rollback.template,
        region: &rollback.region,
        digest: rollback.to.as_ref(),
    };
    report::finish(&subject, reports, args.remote.access.format)
}
