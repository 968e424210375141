//! `pinion hold` and `pinion release`: stop promotions to a pin, and let
//! them through again. Reported like a promotion: per target, green only if
//! every target did it.

use pinion_api::HoldRequest;
use pinion_core::{HoldReason, Region, TemplateName};

use super::{connect, flag};
use crate::ExitCode;
use crate::cli::{HoldArgs, ReleaseArgs};
use crate::report::{self, GateCommand, Subject, TargetReport};
use crate::target::Preflight;

pub async fn hold(args: HoldArgs) -> ExitCode {
    let parsed = (|| {
        Ok::<_, String>((
            flag("--template", TemplateName::parse(&args.template))?,
            flag("--region", Region::parse(&args.region))?,
            flag("--reason", HoldReason::parse(&args.reason))?,
        ))
    })();
    let prepared = parsed
        .map_err(Preflight::general)
        .and_then(|parsed| Ok((parsed, connect(&args.remote)?)));
    let ((template, region, reason), (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("hold", &preflight),
    };
    let request = HoldRequest {
        template_name: template.to_string(),
        region: Some(region.to_string()),
        reason: reason.as_str().to_owned(),
    };
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(match client.hold(target, &request).await {
            Ok(held) => TargetReport::held(target, held),
            Err(err) => TargetReport::failed(target, &err),
        });
    }
    let subject = Subject {
        command: GateCommand::Hold,
        template: &template,
        region: &region,
        digest: None,
    };
    report::finish(&subject, reports, args.remote.access.format)
}

pub async fn release(args: ReleaseArgs) -> ExitCode {
    let parsed = (|| {
        Ok::<_, String>((
            flag("--template", TemplateName::parse(&args.template))?,
            flag("--region", Region::parse(&args.region))?,
        ))
    })();
    let prepared = parsed
        .map_err(Preflight::general)
        .and_then(|parsed| Ok((parsed, connect(&args.remote)?)));
    let ((template, region), (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("release", &preflight),
    };
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(match client.release(target, &template, &region).await {
            Ok(released) => TargetReport::held(target, released),
            Err(err) => TargetReport::failed(target, &err),
        });
    }
    let subject = Subject {
        command: GateCommand::Release,
        template: &template,
        region: &region,
        digest: None,
    };
    report::finish(&subject, reports, args.remote.access.format)
}
