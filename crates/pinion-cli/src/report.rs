//! The gate's report: the outcome at each target, summarised once, with an
//! exit code that cannot be green unless every target said yes. Rendered
//! as human lines (successes on stdout, each failure once on stderr), as
//! one JSON document (`--format json`), and for Actions runners.

use pinion_api::{Hold, Pin};
use pinion_core::{Digest, Region, TemplateName};
use serde::Serialize;

use crate::ExitCode;
use crate::actions;
use crate::cli::Format;
use crate::client::{ClientError, Held, Promoted};
use crate::output;
use crate::target::{Preflight, Target};

/// The gate's commands that report per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateCommand {
    Promote,
    Verify,
    Rollback,
    Hold,
    Release,
}

impl GateCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            GateCommand::Promote => "promote",
            GateCommand::Verify => "verify",
            GateCommand::Rollback => "rollback",
            GateCommand::Hold => "hold",
            GateCommand::Release => "release",
        }
    }
}

/// What happened at one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// promote, rollback: the pin moved (201).
    Moved,
    /// promote, rollback: the pin was already there (200).
    Unchanged,
    /// verify: the pin is the digest.
    Match,
    /// verify: the pin is another digest.
    Mismatch,
    /// verify: there is no pin.
    Missing,
    /// verify `--converged`: the pin is the digest, but not enough of its
    /// fleet ran it in time.
    NotConverged,
    /// The request failed: see `error`.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Moved => "moved",
            Outcome::Unchanged => "unchanged",
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::Missing => "missing",
            Outcome::NotConverged => "not_converged",
            Outcome::Error => "error",
        }
    }

    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Moved | Outcome::Unchanged | Outcome::Match)
    }
}

/// The outcome at one target.
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub server: String,
    pub ok: bool,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the outcome was learnt when the server's answer did not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled: Option<String>,
    /// verify `--converged`: the pin's fleet when the wait ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetCounts>,
    /// hold, release: the hold taken, found, or released.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

/// A pin's fleet as `verify --converged` last read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FleetCounts {
    pub current: u64,
    pub behind: u64,
    pub unknown: u64,
    /// The share of live instances that run the digest, in percent.
    pub percent: u64,
}

impl FleetCounts {
    pub fn describe(&self) -> String {
        format!(
            "{}% converged: {} current, {} behind, {} unknown",
            self.percent, self.current, self.behind, self.unknown
        )
    }
}

impl TargetReport {
    fn new(target: &Target, outcome: Outcome) -> TargetReport {
        TargetReport {
            target: target.name.clone(),
            server: target.base.to_string(),
            ok: outcome.is_ok(),
            outcome,
            status: None,
            pin: None,
            error: None,
            settled: None,
            fleet: None,
            hold: None,
        }
    }

    /// A hold answered 201 (held now) or 200 (held already); a release 200.
    pub fn held(target: &Target, held: Held) -> TargetReport {
        let outcome = if held.status == reqwest::StatusCode::CREATED {
            Outcome::Moved
        } else {
            Outcome::Unchanged
        };
        TargetReport {
            status: Some(held.status.as_u16()),
            hold: Some(held.hold),
            ..TargetReport::new(target, outcome)
        }
    }

    /// A promote or rollback answered 201 (moved) or 200 (already there).
    pub fn written(target: &Target, promoted: Promoted) -> TargetReport {
        let outcome = if promoted.status == reqwest::StatusCode::CREATED {
            Outcome::Moved
        } else {
            Outcome::Unchanged
        };
        TargetReport {
            status: Some(promoted.status.as_u16()),
            pin: Some(promoted.pin),
            settled: promoted.settled,
            ..TargetReport::new(target, outcome)
        }
    }

    /// A verify that read the pin (or its absence).
    pub fn checked(
        target: &Target,
        outcome: Outcome,
        pin: Option<Pin>,
        error: Option<String>,
    ) -> TargetReport {
        TargetReport {
            status: Some(200),
            pin,
            error,
            ..TargetReport::new(target, outcome)
        }
    }

    /// A request that failed.
    pub fn failed(target: &Target, error: &ClientError) -> TargetReport {
        TargetReport {
            status: error.status(),
            error: Some(error.to_string()),
            ..TargetReport::new(target, Outcome::Error)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: GateCommand,
    pub ok: bool,
    pub template_name: String,
    pub region: String,
    /// The digest asked for (absent for a rollback to "the previous one").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub targets: Vec<TargetReport>,
}

/// What a report is about.
pub struct Subject<'a> {
    pub command: GateCommand,
    pub template: &'a TemplateName,
    pub region: &'a Region,
    pub digest: Option<&'a Digest>,
}

/// Renders the report everywhere it goes and returns the exit code: 2 if
/// any target failed to answer, 1 if one answered no, else 0.
pub fn finish(subject: &Subject<'_>, targets: Vec<TargetReport>, format: Format) -> ExitCode {
    let any_error = targets
        .iter()
        .any(|report| report.outcome == Outcome::Error);
    let any_refused = targets
        .iter()
        .any(|report| !report.ok && report.outcome != Outcome::Error);
    let report = Report {
        command: subject.command,
        ok: !any_error && !any_refused,
        template_name: subject.template.to_string(),
        region: subject.region.to_string(),
        image_digest: subject.digest.map(ToString::to_string),
        targets,
    };
    let command = report.command.as_str();

    match format {
        Format::Json => {
            output::json(&report);
        }
        Format::Human => {
            for target in report.targets.iter().filter(|target| target.ok) {
                if !output::line(&success_line(&report, target)) {
                    break;
                }
            }
        }
    }
    for target in report.targets.iter().filter(|target| !target.ok) {
        let reason = target.error.as_deref().unwrap_or("failed");
        eprintln!("error: {}: {reason}", target.target);
        actions::error_annotation(&format!("pinion {command}: {}: {reason}", target.target));
    }
    let failed: Vec<&str> = report
        .targets
        .iter()
        .filter(|target| !target.ok)
        .map(|target| target.target.as_str())
        .collect();
    if !failed.is_empty() && report.targets.len() > 1 {
        eprintln!(
            "error: {command} failed on {} of {} targets: {}",
            failed.len(),
            report.targets.len(),
            failed.join(", ")
        );
    }
    let mut outputs = vec![
        ("ok", report.ok.to_string()),
        ("failed_targets", failed.join(",")),
        ("attempted", "true".to_owned()),
        (
            "image_digest",
            report.image_digest.clone().unwrap_or_default(),
        ),
        ("json", serde_json::to_string(&report).unwrap_or_default()),
    ];
    let fleets: Vec<FleetCounts> = report.targets.iter().filter_map(|t| t.fleet).collect();
    if !fleets.is_empty() {
        // Summed over the targets: one number for a pipeline's next step.
        let sum =
            |count: fn(&FleetCounts) -> u64| fleets.iter().map(count).sum::<u64>().to_string();
        outputs.extend([
            ("fleet_current", sum(|f| f.current)),
            ("fleet_behind", sum(|f| f.behind)),
            ("fleet_unknown", sum(|f| f.unknown)),
        ]);
    }
    actions::write_output(&outputs);
    actions::write_summary(&summary(&report));

    if any_error {
        ExitCode::Error
    } else if any_refused {
        ExitCode::No
    } else {
        ExitCode::Success
    }
}

/// A failure before any request: each problem on its own line, every target
/// it concerns named in `failed_targets` and in the summary; exit 2.
pub fn preflight_failed(command: &str, preflight: &Preflight) -> ExitCode {
    for line in preflight.lines() {
        eprintln!("error: {line}");
        actions::error_annotation(&format!("pinion {command}: {line}"));
    }
    actions::write_output(&[
        ("ok", "false".into()),
        ("failed_targets", preflight.targets().join(",")),
        ("attempted", "false".into()),
    ]);
    let mut markdown = format!(
        "### pinion {command}: FAILED before any request\n\n| target | problem |\n|---|---|\n"
    );
    for (target, reason) in &preflight.problems {
        markdown.push_str(&format!(
            "| {} | {} |\n",
            actions::cell(target.as_deref().unwrap_or("(all)")),
            actions::cell(reason)
        ));
    }
    markdown.push('\n');
    actions::write_summary(&markdown);
    ExitCode::Error
}

fn success_line(report: &Report, target: &TargetReport) -> String {
    let what = format!("`{}`/`{}`", report.template_name, report.region);
    let digest = target
        .pin
        .as_ref()
        .map(|pin| pin.image_digest.as_str())
        .or(report.image_digest.as_deref())
        .unwrap_or("?");
    let name = &target.target;
    match (report.command, target.outcome) {
        (GateCommand::Rollback, Outcome::Moved) => {
            match target.pin.as_ref().and_then(|pin| pin.hold.as_ref()) {
                Some(hold) => format!(
                    "{name}: rolled {what} back to `{digest}` and held it: {}",
                    hold.reason
                ),
                None => format!("{name}: rolled {what} back to `{digest}`"),
            }
        }
        (GateCommand::Hold | GateCommand::Release, outcome) => {
            let reason = target.hold.as_ref().map_or("", |hold| hold.reason.as_str());
            let by = target
                .hold
                .as_ref()
                .map_or("", |hold| hold.held_by.as_str());
            match (report.command, outcome) {
                (GateCommand::Hold, Outcome::Moved) => format!("{name}: held {what}: {reason}"),
                (GateCommand::Hold, _) => {
                    format!("{name}: {what} was already held by `{by}`: {reason}")
                }
                _ => format!("{name}: released {what} (held by `{by}`: {reason})"),
            }
        }
        (_, Outcome::Moved) => format!("{name}: moved {what} to `{digest}`"),
        (_, Outcome::Unchanged) => format!("{name}: {what} already at `{digest}`"),
        (_, Outcome::Match) => match target.fleet {
            Some(fleet) => format!(
                "{name}: {what} is `{digest}` as expected, {}",
                fleet.describe()
            ),
            None => format!("{name}: {what} is `{digest}` as expected"),
        },
        (_, outcome) => format!("{name}: {}", outcome.as_str()),
    }
}

/// A Markdown table of the outcome at each target.
fn summary(report: &Report) -> String {
    let mut text = format!(
        "### pinion {}: `{}`/`{}` → `{}`: {}\n\n| target | outcome | detail |\n|---|---|---|\n",
        report.command.as_str(),
        report.template_name,
        report.region,
        report
            .image_digest
            .as_deref()
            .unwrap_or(match report.command {
                GateCommand::Hold => "(held)",
                GateCommand::Release => "(released)",
                _ => "(previous)",
            }),
        if report.ok { "ok" } else { "FAILED" }
    );
    for target in &report.targets {
        let outcome = target.outcome.as_str();
        let fleet = target.fleet.map(|fleet| fleet.describe());
        let detail = target
            .error
            .as_deref()
            .or(fleet.as_deref())
            .unwrap_or(target.server.as_str());
        text.push_str(&format!(
            "| {} | {outcome} | {} |\n",
            actions::cell(&target.target),
            actions::cell(detail)
        ));
    }
    text.push('\n');
    text
}
