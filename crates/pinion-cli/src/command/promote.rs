//! `pinion promote`: move a pin on every target; green only if each answered
//! 200/201 with a pin at the digest asked for.

use pinion_api::PromoteRequest;
use pinion_core::{Digest, GitSha, Label, Notes, Region, RunUrl, TemplateName};

use super::{connect, flag, optional_flag};
use crate::ExitCode;
use crate::actions;
use crate::cli::PromoteArgs;
use crate::report::{self, GateCommand, Subject, TargetReport};
use crate::target::Preflight;

/// A promotion, every field parsed.
struct Promotion {
    template: TemplateName,
    region: Region,
    digest: Digest,
    git_sha: Option<GitSha>,
    notes: Option<Notes>,
    expect: Option<Digest>,
    build_sequence: Option<i64>,
    force: bool,
    ci_run_url: Option<RunUrl>,
    repository: Option<Label>,
    workflow: Option<Label>,
    keep_canary: bool,
}

impl Promotion {
    fn parse(args: &PromoteArgs) -> Result<Promotion, String> {
        if let Some(sequence) = args.build_sequence.filter(|sequence| *sequence < 0) {
            return Err(format!("--build-sequence: {sequence} must not be negative"));
        }
        Ok(Promotion {
            template: flag("--template", TemplateName::parse(&args.pin.template))?,
            region: flag("--region", Region::parse(&args.pin.region))?,
            digest: flag("--digest", Digest::parse(&args.pin.digest))?,
            git_sha: optional_flag("--git-sha", args.git_sha.as_deref(), GitSha::parse)?,
            notes: optional_flag("--notes", args.notes.as_deref(), Notes::parse)?,
            expect: optional_flag("--expect", args.expect.as_deref(), Digest::parse)?,
            build_sequence: args.build_sequence,
            force: args.force,
            ci_run_url: optional_flag(
                "--ci-run-url",
                args.ci_run_url.clone().or_else(actions_run_url).as_deref(),
                RunUrl::parse,
            )?,
            repository: optional_flag(
                "--source-repository",
                args.source_repository
                    .clone()
                    .or_else(|| actions_provenance("GITHUB_REPOSITORY"))
                    .as_deref(),
                Label::parse,
            )?,
            workflow: optional_flag(
                "--workflow",
                args.workflow
                    .clone()
                    .or_else(|| actions_provenance("GITHUB_WORKFLOW"))
                    .as_deref(),
                Label::parse,
            )?,
            keep_canary: args.keep_canary,
        })
    }

    /// The wire request, from the parsed values.
    fn request(&self) -> PromoteRequest {
        PromoteRequest {
            template_name: self.template.to_string(),
            image_digest: self.digest.to_string(),
            git_sha: self.git_sha.as_ref().map(|sha| sha.as_str().to_owned()),
            notes: self.notes.as_ref().map(|notes| notes.as_str().to_owned()),
            region: Some(self.region.to_string()),
            expected_digest: self.expect.as_ref().map(ToString::to_string),
            build_sequence: self.build_sequence,
            force: self.force,
            ci_run_url: self.ci_run_url.as_ref().map(|url| url.as_str().to_owned()),
            repository: self
                .repository
                .as_ref()
                .map(|label| label.as_str().to_owned()),
            workflow: self
                .workflow
                .as_ref()
                .map(|label| label.as_str().to_owned()),
            keep_canary: self.keep_canary,
        }
    }
}

/// Provenance from the Actions environment, where the flags leave it open.
fn actions_provenance(variable: &str) -> Option<String> {
    actions::in_actions()
        .then(|| std::env::var(variable).ok())
        .flatten()
        .filter(|value| !value.is_empty())
}

fn actions_run_url() -> Option<String> {
    let server = actions_provenance("GITHUB_SERVER_URL")?;
    let repository = actions_provenance("GITHUB_REPOSITORY")?;
    let run = actions_provenance("GITHUB_RUN_ID")?;
    Some(format!("{server}/{repository}/actions/runs/{run}"))
}

pub async fn run(args: PromoteArgs) -> ExitCode {
    let prepared = Promotion::parse(&args)
        .map_err(Preflight::general)
        .and_then(|promotion| Ok((promotion, connect(&args.remote)?)));
    let (promotion, (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("promote", &preflight),
    };
    let request = promotion.request();
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(match client.promote(target, &request).await {
            Ok(promoted) => {
                if promoted.new_region {
                    // A typo'd region makes a pin nobody resolves: say so,
                    // though the promotion itself went through.
                    crate::output::warn(&format!(
                        "{}: this created the first pin of region `{}` on that server; if the region is misspelled, nothing resolves it",
                        target.name, promotion.region
                    ));
                }
                TargetReport::written(target, promoted)
            }
            Err(err) => TargetReport::failed(target, &err),
        });
    }
    let subject = Subject {
        command: GateCommand::Promote,
        template: &promotion.template,
        region: &promotion.region,
        digest: Some(&promotion.digest),
    };
    report::finish(&subject, reports, args.remote.access.format)
}
