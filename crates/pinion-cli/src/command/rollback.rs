//! `pinion rollback`: move a pin back, by default to the digest before.

use pinion_api::RollbackRequest;
use pinion_core::{Digest, HoldReason, Notes, Region, TemplateName};

use super::{connect, flag, optional_flag};
use crate::ExitCode;
use crate::cli::RollbackArgs;
use crate::client::{Client, ClientError};
use crate::report::{self, GateCommand, Subject, TargetReport};
use crate::target::{Preflight, Target};

struct Rollback {
    template: TemplateName,
    region: Region,
    to: Option<Digest>,
    notes: Option<Notes>,
    hold: bool,
    reason: Option<HoldReason>,
    keep_canary: bool,
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
            keep_canary: args.keep_canary,
        })
    }

    /// The wire request, aimed at one target's pin as it is now: the pin's
    /// digest as `expected_digest`, and the target resolved, so two
    /// rollbacks at once (two on-call engineers, a retried job) make one
    /// move and one clear `pin_conflict`, never undo each other.
    async fn aimed(
        &self,
        client: &Client,
        target: &Target,
    ) -> Result<RollbackRequest, ClientError> {
        let mut request = self.request(self.to.clone());
        let pins = client
            .list_pins(target, &self.template, &self.region)
            .await?;
        let Some(current) = pins.into_iter().find(|pin| {
            pin.template_name == self.template.as_str() && pin.region == self.region.as_str()
        }) else {
            // No pin: the server says so.
            return Ok(request);
        };
        if request.to_digest.is_none() {
            let history = client
                .history(
                    target,
                    Some(&self.template),
                    Some(&self.region),
                    ROLLBACK_HISTORY,
                )
                .await?;
            request.to_digest = history
                .history
                .into_iter()
                .find(|entry| {
                    entry.template_name == self.template.as_str()
                        && entry.region == self.region.as_str()
                        && matches!(entry.action.as_str(), "promote" | "rollback")
                })
                .and_then(|entry| entry.from_digest);
            if request.to_digest.is_none() {
                // Nothing earlier: the server answers `nothing_to_roll_back`.
                return Ok(request);
            }
        }
        request.expected_digest = Some(current.image_digest);
        Ok(request)
    }

    fn request(&self, to: Option<Digest>) -> RollbackRequest {
        RollbackRequest {
            template_name: self.template.to_string(),
            region: Some(self.region.to_string()),
            to_digest: to.as_ref().map(ToString::to_string),
            notes: self.notes.as_ref().map(|notes| notes.as_str().to_owned()),
            hold: self.hold,
            reason: self
                .reason
                .as_ref()
                .map(|reason| reason.as_str().to_owned()),
            expected_digest: None,
            keep_canary: self.keep_canary,
        }
    }
}

/// How far back the pin's history is read for its previous digest (holds
/// and releases are entries too).
const ROLLBACK_HISTORY: u32 = 100;

pub async fn run(args: RollbackArgs) -> ExitCode {
    let prepared = Rollback::parse(&args)
        .map_err(Preflight::general)
        .and_then(|rollback| Ok((rollback, connect(&args.remote)?)));
    let (rollback, (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("rollback", &preflight),
    };
    let mut reports = Vec::new();
    for target in &targets {
        let sent = match rollback.aimed(&client, target).await {
            Ok(request) => client.rollback(target, &request).await,
            Err(err) => Err(err),
        };
        reports.push(match sent {
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
