//! `pinion promote` and `pinion verify`: the CI gate. Everything is parsed and
//! checked before the first request; every target is attempted; the outcome
//! is a value per target, summarised once, with an exit code that cannot be
//! green unless every target said yes.

use std::time::Duration;

use pinion_api::{Pin, PromoteRequest, RollbackRequest};
use pinion_core::{Digest, GitSha, Label, Notes, Region, RunUrl, TemplateName};
use reqwest::StatusCode;
use reqwest::Url;
use serde::Serialize;

use crate::ExitCode;
use crate::actions;
use crate::cli::{Format, HistoryArgs, PinArgs, PromoteArgs, Remote, RollbackArgs, VerifyArgs};
use crate::client::{Client, Target};

/// The outcome at one target.
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub server: String,
    pub ok: bool,
    /// promote: `moved`, `unchanged`, `error`; verify: `match`, `mismatch`,
    /// `missing`, `error`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub ok: bool,
    pub template_name: String,
    pub region: String,
    /// The digest asked for (absent for a rollback to "the previous one").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub targets: Vec<TargetReport>,
}

/// The validated pin coordinates shared by both commands.
struct PinSpec {
    template: TemplateName,
    digest: Digest,
    region: Region,
}

fn parse_pin(args: &PinArgs) -> Result<PinSpec, String> {
    Ok(PinSpec {
        template: TemplateName::parse(&args.template)
            .map_err(|err| format!("--template: {err}"))?,
        digest: Digest::parse(&args.digest).map_err(|err| format!("--digest: {err}"))?,
        region: Region::parse(&args.region).map_err(|err| format!("--region: {err}"))?,
    })
}

/// Resolves `--server` / `--target` and their tokens before any request.
pub fn parse_targets(
    remote: &Remote,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Target>, String> {
    let mut named: Vec<(String, String, String)> = Vec::new();
    if let Some(server) = &remote.server {
        named.push(("server".into(), server.clone(), remote.token_env.clone()));
    }
    for spec in &remote.targets {
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| format!("--target `{}` must be NAME=URL", spec.escape_debug()))?;
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(format!(
                "--target name `{}` must be letters, digits, `-` or `_`",
                name.escape_debug()
            ));
        }
        if named
            .iter()
            .any(|(other, _, _)| other.eq_ignore_ascii_case(name))
        {
            return Err(format!("--target `{name}` is given twice"));
        }
        let variable = format!(
            "PINION_TOKEN_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        named.push((name.to_owned(), url.to_owned(), variable));
    }
    if named.is_empty() {
        return Err("give --server URL or at least one --target NAME=URL".into());
    }
    named
        .into_iter()
        .map(|(name, url, variable)| {
            let base = parse_server_url(&url, remote.allow_insecure_http)
                .map_err(|err| format!("{name}: {err}"))?;
            let token = env(&variable)
                .filter(|token| !token.trim().is_empty())
                .ok_or_else(|| {
                    format!("{name}: the token variable `{variable}` is unset or empty")
                })?;
            Ok(Target {
                name,
                base,
                token: token.trim().to_owned(),
            })
        })
        .collect()
}

fn parse_server_url(text: &str, allow_insecure_http: bool) -> Result<Url, String> {
    let url = Url::parse(text)
        .map_err(|err| format!("server URL `{}` is not a URL: {err}", text.escape_debug()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the server URL must not carry credentials; use the token variable".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "server URL `{url}` must not have a query or fragment"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_http || is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "refusing plain http to `{}`: the token would cross the network unencrypted; use https or --allow-insecure-http",
            url.host_str().unwrap_or_default()
        )),
        other => Err(format!("server URL scheme `{other}` must be http or https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Provenance from the Actions environment, where the flags leave it open.
fn actions_provenance(variable: &str) -> Option<String> {
    actions::in_actions()
        .then(|| environment(variable))
        .flatten()
        .filter(|value| !value.is_empty())
}

fn actions_run_url() -> Option<String> {
    let server = actions_provenance("GITHUB_SERVER_URL")?;
    let repository = actions_provenance("GITHUB_REPOSITORY")?;
    let run = actions_provenance("GITHUB_RUN_ID")?;
    Some(format!("{server}/{repository}/actions/runs/{run}"))
}

fn optional<T>(
    flag: &str,
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, pinion_core::ParseError>,
) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(value) => {
            parse(&value).map_err(|err| format!("{flag}: {err}"))?;
            Ok(Some(value))
        }
    }
}

fn promote_request(args: &PromoteArgs, pin: &PinSpec) -> Result<PromoteRequest, String> {
    let git_sha = args
        .git_sha
        .as_deref()
        .map(GitSha::parse)
        .transpose()
        .map_err(|err| format!("--git-sha: {err}"))?;
    if let Some(sequence) = args.build_sequence.filter(|sequence| *sequence < 0) {
        return Err(format!("--build-sequence: {sequence} must not be negative"));
    }
    Ok(PromoteRequest {
        template_name: pin.template.to_string(),
        image_digest: pin.digest.to_string(),
        git_sha: git_sha.map(|sha| sha.as_str().to_owned()),
        notes: optional("--notes", args.notes.clone(), Notes::parse)?,
        region: Some(pin.region.to_string()),
        expected_digest: optional("--expect", args.expect.clone(), Digest::parse)?,
        build_sequence: args.build_sequence,
        force: args.force,
        ci_run_url: optional(
            "--ci-run-url",
            args.ci_run_url.clone().or_else(actions_run_url),
            RunUrl::parse,
        )?,
        repository: optional(
            "--source-repository",
            args.source_repository
                .clone()
                .or_else(|| actions_provenance("GITHUB_REPOSITORY")),
            Label::parse,
        )?,
        workflow: optional(
            "--workflow",
            args.workflow
                .clone()
                .or_else(|| actions_provenance("GITHUB_WORKFLOW")),
            Label::parse,
        )?,
    })
}

pub async fn promote(args: PromoteArgs) -> ExitCode {
    let prepared = (|| {
        let pin = parse_pin(&args.pin)?;
        let request = promote_request(&args, &pin)?;
        let targets = parse_targets(&args.remote, &environment)?;
        let client = Client::new(timeout(&args.remote)?)?;
        Ok::<_, String>((pin, request, targets, client))
    })();
    let (pin, request, targets, client) = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => return fail_early("promote", &reason),
    };
    let mut reports = Vec::new();
    for target in &targets {
        let report = match client.promote(target, &request).await {
            Ok(promoted) => moved_report(target, promoted),
            Err(reason) => failed(target, reason),
        };
        reports.push(report);
    }
    finish(
        "promote",
        &pin.template,
        &pin.region,
        Some(&pin.digest),
        reports,
        args.remote.format,
    )
}

fn moved_report(target: &Target, promoted: crate::client::Promoted) -> TargetReport {
    TargetReport {
        target: target.name.clone(),
        server: target.base.to_string(),
        ok: true,
        outcome: if promoted.status == StatusCode::CREATED {
            "moved"
        } else {
            "unchanged"
        },
        status: Some(promoted.status.as_u16()),
        pin: Some(promoted.pin),
        error: None,
    }
}

pub async fn rollback(args: RollbackArgs) -> ExitCode {
    let prepared = (|| {
        let template =
            TemplateName::parse(&args.template).map_err(|err| format!("--template: {err}"))?;
        let region = Region::parse(&args.region).map_err(|err| format!("--region: {err}"))?;
        let to = args
            .to
            .as_deref()
            .map(Digest::parse)
            .transpose()
            .map_err(|err| format!("--to: {err}"))?;
        let notes = optional("--notes", args.notes.clone(), Notes::parse)?;
        let targets = parse_targets(&args.remote, &environment)?;
        let client = Client::new(timeout(&args.remote)?)?;
        Ok::<_, String>((template, region, to, notes, targets, client))
    })();
    let (template, region, to, notes, targets, client) = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => return fail_early("rollback", &reason),
    };
    let request = RollbackRequest {
        template_name: template.to_string(),
        region: Some(region.to_string()),
        to_digest: to.as_ref().map(ToString::to_string),
        notes,
    };
    let mut reports = Vec::new();
    for target in &targets {
        let report = match client.rollback(target, &request).await {
            Ok(moved) => moved_report(target, moved),
            Err(reason) => failed(target, reason),
        };
        reports.push(report);
    }
    finish(
        "rollback",
        &template,
        &region,
        to.as_ref(),
        reports,
        args.remote.format,
    )
}

pub async fn history(args: HistoryArgs) -> ExitCode {
    let prepared = (|| {
        let template = args
            .template
            .as_deref()
            .map(TemplateName::parse)
            .transpose()
            .map_err(|err| format!("--template: {err}"))?;
        let region = args
            .region
            .as_deref()
            .map(Region::parse)
            .transpose()
            .map_err(|err| format!("--region: {err}"))?;
        if !(1..=1000).contains(&args.limit) {
            return Err("--limit must be from 1 to 1000".to_owned());
        }
        let mut targets = parse_targets(&args.remote, &environment)?;
        if targets.len() != 1 {
            return Err(
                "history reads one control plane: give --server or a single --target".into(),
            );
        }
        let client = Client::new(timeout(&args.remote)?)?;
        Ok::<_, String>((template, region, targets.remove(0), client))
    })();
    let (template, region, target, client) = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => return fail_early("history", &reason),
    };
    let listed = client
        .history(
            &target,
            template.as_ref().map(TemplateName::as_str),
            region.as_ref().map(Region::as_str),
            args.limit,
        )
        .await;
    let list = match listed {
        Ok(list) => list,
        Err(reason) => return fail_early("history", &format!("{}: {reason}", target.name)),
    };
    match args.remote.format {
        Format::Json => match serde_json::to_string_pretty(&list) {
            Ok(json) => println!("{json}"),
            Err(err) => return fail_early("history", &format!("could not render: {err}")),
        },
        Format::Human => {
            println!(
                "{:>8}  {:<27}  {:<24}  {:<8}  {:<14}  {:<14}  {:<16}  git_sha",
                "revision", "at", "pin", "action", "from", "to", "actor"
            );
            for entry in &list.history {
                let short = |digest: &str| {
                    digest
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect::<String>()
                };
                println!(
                    "{:>8}  {:<27}  {:<24}  {:<8}  {:<14}  {:<14}  {:<16}  {}",
                    entry.revision,
                    entry.at,
                    format!("{}/{}", entry.template_name, entry.region),
                    entry.action,
                    entry.from_digest.as_deref().map_or("-".to_owned(), short),
                    short(&entry.to_digest),
                    entry.actor,
                    entry.git_sha.as_deref().unwrap_or("-")
                );
            }
            if let Some(before) = list.next_before {
                eprintln!("(more: older entries start below revision {before})");
            }
        }
    }
    ExitCode::Success
}

pub async fn verify(args: VerifyArgs) -> ExitCode {
    let prepared = (|| {
        let pin = parse_pin(&args.pin)?;
        let targets = parse_targets(&args.remote, &environment)?;
        let client = Client::new(timeout(&args.remote)?)?;
        Ok::<_, String>((pin, targets, client))
    })();
    let (pin, targets, client) = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => return fail_early("verify", &reason),
    };
    let mut reports = Vec::new();
    for target in &targets {
        let listed = client
            .list_pins(target, pin.template.as_str(), pin.region.as_str())
            .await;
        let report = match listed {
            Ok(pins) => {
                let found = pins.into_iter().find(|row| {
                    row.template_name == pin.template.as_str() && row.region == pin.region.as_str()
                });
                let (ok, outcome, error) = match &found {
                    Some(row) if row.image_digest == pin.digest.as_str() => (true, "match", None),
                    Some(row) => (
                        false,
                        "mismatch",
                        Some(format!(
                            "pin for `{}`/`{}` is `{}`, expected `{}`",
                            pin.template, pin.region, row.image_digest, pin.digest
                        )),
                    ),
                    None => (
                        false,
                        "missing",
                        Some(format!("no pin for `{}`/`{}`", pin.template, pin.region)),
                    ),
                };
                TargetReport {
                    target: target.name.clone(),
                    server: target.base.to_string(),
                    ok,
                    outcome,
                    status: Some(200),
                    pin: found,
                    error,
                }
            }
            Err(reason) => failed(target, reason),
        };
        reports.push(report);
    }
    finish(
        "verify",
        &pin.template,
        &pin.region,
        Some(&pin.digest),
        reports,
        args.remote.format,
    )
}

pub fn timeout(remote: &Remote) -> Result<Duration, String> {
    if remote.timeout == 0 || remote.timeout > 3600 {
        return Err("--timeout must be from 1 to 3600 seconds".into());
    }
    Ok(Duration::from_secs(remote.timeout))
}

fn failed(target: &Target, reason: String) -> TargetReport {
    TargetReport {
        target: target.name.clone(),
        server: target.base.to_string(),
        ok: false,
        outcome: "error",
        status: None,
        pin: None,
        error: Some(reason),
    }
}

/// A failure before any request: one line, exit 2.
fn fail_early(command: &str, reason: &str) -> ExitCode {
    eprintln!("error: {reason}");
    actions::error_annotation(&format!("pinion {command}: {reason}"));
    actions::write_output(&[("ok", "false".into()), ("failed_targets", String::new())]);
    ExitCode::Error
}

fn finish(
    command: &'static str,
    template: &TemplateName,
    region: &Region,
    digest: Option<&Digest>,
    targets: Vec<TargetReport>,
    format: Format,
) -> ExitCode {
    let any_error = targets.iter().any(|report| report.outcome == "error");
    let any_refused = targets
        .iter()
        .any(|report| !report.ok && report.outcome != "error");
    let report = Report {
        command,
        ok: !any_error && !any_refused,
        template_name: template.to_string(),
        region: region.to_string(),
        image_digest: digest.map(ToString::to_string),
        targets,
    };

    match format {
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => eprintln!("error: could not render the report: {err}"),
        },
        Format::Human => {
            for target in &report.targets {
                println!("{}", human_line(command, &report, target));
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
    actions::write_output(&[
        ("ok", report.ok.to_string()),
        ("failed_targets", failed.join(",")),
        (
            "image_digest",
            report.image_digest.clone().unwrap_or_default(),
        ),
        ("json", serde_json::to_string(&report).unwrap_or_default()),
    ]);
    actions::write_summary(command, &report);

    if any_error {
        ExitCode::Error
    } else if any_refused {
        ExitCode::No
    } else {
        ExitCode::Success
    }
}

fn human_line(command: &str, report: &Report, target: &TargetReport) -> String {
    let what = format!("`{}`/`{}`", report.template_name, report.region);
    let digest = target
        .pin
        .as_ref()
        .map(|pin| pin.image_digest.as_str())
        .or(report.image_digest.as_deref())
        .unwrap_or("?");
    let name = &target.target;
    match (command, target.outcome) {
        (_, "error") => format!("{name}: FAILED: {}", target.error.as_deref().unwrap_or("")),
        ("promote", "moved") => format!("{name}: moved {what} to `{digest}`"),
        ("rollback", "moved") => format!("{name}: rolled {what} back to `{digest}`"),
        (_, "unchanged") => format!("{name}: {what} already at `{digest}`"),
        (_, "match") => format!("{name}: {what} is `{digest}` as expected"),
        (_, outcome) => format!(
            "{name}: {}: {}",
            outcome.to_uppercase(),
            target.error.as_deref().unwrap_or("")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:7878",
            "http://localhost:1",
            "http://[::1]:80/",
            "https://cp.example.com",
        ] {
            assert!(parse_server_url(ok, false).is_ok(), "{ok}");
        }
        assert!(parse_server_url("http://cp.example.com", false).is_err());
        assert!(parse_server_url("http://cp.example.com", true).is_ok());
        assert!(parse_server_url("https://user:pw@cp.example.com", false).is_err());
        assert!(parse_server_url("ftp://cp.example.com", false).is_err());
        assert!(parse_server_url("not a url", false).is_err());
    }
}
