//! `pinion drift`: for every pin on every target, what the template's
//! repository tag points at now, from this machine's view of the registry.
//! Exit 1 if any pin is stale; 2 if anything could not be checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use pinion_api::{DriftReport, PinList, RuntimeList};
use pinion_core::{Digest, DriftStatus, PinnedDigest, Repository, template_rows};
use pinion_registry::{Registry, Tag, TagAnswer, resolve_tags};
use serde::Serialize;

use super::connect;
use crate::ExitCode;
use crate::actions;
use crate::cli::{DriftArgs, Format};
use crate::client::{Client, ClientError};
use crate::output;
use crate::report;
use crate::target::{Preflight, Target};

#[derive(Debug, Serialize)]
struct Row {
    template_name: String,
    region: String,
    image_digest: Option<String>,
    tag_digest: Option<String>,
    /// `current`, `stale`, `tag_missing`, `unpinned`, `error`.
    status: String,
    /// How long the server's watcher has seen this pin behind, if it has.
    behind_seconds: Option<i64>,
    promoted_at: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct TargetDrift {
    target: String,
    server: String,
    ok: bool,
    error: Option<String>,
    pins: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Disagreement {
    template_name: String,
    region: String,
    /// target name → pinned digest.
    digests: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: &'static str,
    ok: bool,
    tag: String,
    targets: Vec<TargetDrift>,
    disagreements: Vec<Disagreement>,
}

/// What one target told us before any registry lookup.
struct Fetched {
    catalog: RuntimeList,
    pins: PinList,
    /// The server watcher's report, for how long a pin has been behind.
    watched: Option<DriftReport>,
}

/// Registry lookups at once.
const CONCURRENCY: usize = 16;

pub async fn run(args: DriftArgs) -> ExitCode {
    let prepared = (|| {
        let tag = Tag::parse(&args.tag).map_err(|err| format!("--tag: {err}"))?;
        let registry = Registry::new(super::digest::settings(&args.registry)?)
            .map_err(|err| err.to_string())?;
        Ok::<_, String>((tag, registry))
    })();
    let prepared = prepared
        .map_err(Preflight::general)
        .and_then(|prepared| Ok((prepared, connect(&args.remote)?)));
    let ((tag, registry), (targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("drift", &preflight),
    };
    let mut fetched = Vec::new();
    for target in &targets {
        fetched.push(fetch(&client, target).await);
    }
    // One registry lookup per repository, shared by every target, several at once.
    let repositories: BTreeSet<Repository> = fetched
        .iter()
        .flatten()
        .flat_map(|fetched| &fetched.catalog.runtimes)
        .filter_map(|runtime| {
            runtime
                .image
                .as_deref()
                .and_then(|image| Repository::parse(image).ok())
        })
        .collect();
    let answers = resolve_tags(Arc::new(registry), repositories, &tag, CONCURRENCY).await;
    let results: Vec<TargetDrift> = targets
        .iter()
        .zip(fetched)
        .map(|(target, fetched)| rows(target, fetched, &answers))
        .collect();
    let disagreements = disagreements(&results);
    let stale = results
        .iter()
        .flat_map(|t| &t.pins)
        .any(|row| row.status == "stale");
    let broken = results.iter().any(|t| !t.ok);
    let report = Report {
        command: "drift",
        ok: !stale && !broken,
        tag: tag.to_string(),
        targets: results,
        disagreements,
    };
    print(&report, args.remote.access.format);
    actions::write_output(&[
        ("ok", report.ok.to_string()),
        ("stale", stale.to_string()),
        ("json", serde_json::to_string(&report).unwrap_or_default()),
    ]);
    if broken {
        ExitCode::Error
    } else if stale {
        ExitCode::No
    } else {
        ExitCode::Success
    }
}

async fn fetch(client: &Client, target: &Target) -> Result<Fetched, ClientError> {
    let catalog: RuntimeList = client.get_json(target, "cp/runtimes").await?;
    let pins: PinList = client.get_json(target, "cp/admin/runtime-image").await?;
    let watched = client
        .get_json(target, "cp/admin/runtime-image/drift")
        .await
        .ok();
    Ok(Fetched {
        catalog,
        pins,
        watched,
    })
}

type Answers = HashMap<Repository, TagAnswer>;

fn rows(target: &Target, fetched: Result<Fetched, ClientError>, answers: &Answers) -> TargetDrift {
    let mut result = TargetDrift {
        target: target.name.clone(),
        server: target.base.to_string(),
        ok: true,
        error: None,
        pins: Vec::new(),
    };
    let Fetched {
        catalog,
        pins,
        watched,
    } = match fetched {
        Ok(fetched) => fetched,
        Err(err) => {
            result.ok = false;
            result.error = Some(err.to_string());
            return result;
        }
    };
    for runtime in &catalog.runtimes {
        // A template without a repository has no tag to compare with.
        let Some(image) = runtime.image.as_deref() else {
            continue;
        };
        let repository = match Repository::parse(image) {
            Ok(repository) => repository,
            Err(err) => {
                result.ok = false;
                result.pins.push(Row {
                    template_name: runtime.name.clone(),
                    region: "global".to_owned(),
                    image_digest: None,
                    tag_digest: None,
                    status: DriftStatus::Error.as_str().to_owned(),
                    behind_seconds: None,
                    promoted_at: None,
                    error: Some(format!("the catalog's repository cannot be read: {err}")),
                });
                continue;
            }
        };
        let answer = answers.get(&repository);
        let template_pins: Vec<&pinion_api::Pin> = pins
            .pins
            .iter()
            .filter(|pin| pin.template_name == runtime.name)
            .collect();
        // A digest the server sent that does not parse is an error row: the
        // check could not be made, so it must not pass as "unpinned".
        let parsed: Vec<Result<Digest, String>> = template_pins
            .iter()
            .map(|pin| Digest::parse(&pin.image_digest).map_err(|err| err.to_string()))
            .collect();
        let inputs: Vec<PinnedDigest<'_, &pinion_api::Pin>> = template_pins
            .iter()
            .zip(&parsed)
            .map(|(pin, digest)| PinnedDigest {
                key: *pin,
                digest: digest.as_ref().map_err(String::as_str),
            })
            .collect();
        let not_finished: TagAnswer = Err("the lookup did not finish".to_owned());
        for row in template_rows(&inputs, Some(answer.unwrap_or(&not_finished))) {
            if row.status == DriftStatus::Error {
                result.ok = false;
            }
            let region = row
                .key
                .map_or_else(|| "global".to_owned(), |pin| pin.region.clone());
            let tag_digest = row.tag_digest.map(ToString::to_string);
            let behind_seconds = watched.as_ref().and_then(|report| {
                report
                    .pins
                    .iter()
                    .find(|entry| {
                        entry.template_name == runtime.name
                            && entry.region == region
                            && entry.tag_digest == tag_digest
                            && entry.status == "stale"
                    })
                    .and_then(|entry| entry.behind_seconds)
            });
            result.pins.push(Row {
                template_name: runtime.name.clone(),
                region,
                image_digest: row
                    .pinned
                    .map(ToString::to_string)
                    .or_else(|| row.key.map(|pin| pin.image_digest.clone())),
                tag_digest,
                status: row.status.as_str().to_owned(),
                behind_seconds,
                promoted_at: row.key.map(|pin| pin.promoted_at.clone()),
                error: row.error,
            });
        }
    }
    if result.error.is_none() && !result.ok {
        result.error = Some("some repositories could not be checked".into());
    }
    result
}

/// Pins that several targets hold for the same template and region, at
/// different digests.
fn disagreements(results: &[TargetDrift]) -> Vec<Disagreement> {
    let mut seen: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for target in results {
        for row in &target.pins {
            if let Some(digest) = &row.image_digest {
                seen.entry((row.template_name.clone(), row.region.clone()))
                    .or_default()
                    .insert(target.target.clone(), digest.clone());
            }
        }
    }
    seen.into_iter()
        .filter(|(_, digests)| {
            let mut values: Vec<&String> = digests.values().collect();
            values.dedup();
            digests.len() > 1 && values.len() > 1
        })
        .map(|((template_name, region), digests)| Disagreement {
            template_name,
            region,
            digests,
        })
        .collect()
}

fn print(report: &Report, format: Format) {
    if format == Format::Json {
        output::json(report);
    } else {
        let mut open = output::line(&format!(
            "{:<12} {:<24} {:<14} {:<12} {:<14} {:<14} behind",
            "target", "template", "region", "status", "pinned", "tag"
        ));
        let short = |digest: &Option<String>| {
            digest.as_deref().map_or("-".to_owned(), |d| {
                d.trim_start_matches("sha256:").chars().take(12).collect()
            })
        };
        for target in &report.targets {
            for row in &target.pins {
                let behind = row
                    .behind_seconds
                    .map_or("-".to_owned(), |seconds| format!("{seconds}s"));
                open = open
                    && output::line(&format!(
                        "{:<12} {:<24} {:<14} {:<12} {:<14} {:<14} {behind}",
                        target.target,
                        row.template_name,
                        row.region,
                        row.status,
                        short(&row.image_digest),
                        short(&row.tag_digest)
                    ));
            }
        }
    }
    for target in &report.targets {
        if let Some(reason) = &target.error {
            eprintln!("error: {}: {reason}", target.target);
            actions::error_annotation(&format!("pinion drift: {}: {reason}", target.target));
        }
        for row in target.pins.iter().filter(|row| row.status == "stale") {
            let message = format!(
                "{}: pin `{}`/`{}` is stale: `{}` points at `{}`, the pin at `{}`",
                target.target,
                row.template_name,
                row.region,
                report.tag,
                row.tag_digest.as_deref().unwrap_or("?"),
                row.image_digest.as_deref().unwrap_or("?")
            );
            eprintln!("stale: {message}");
            actions::error_annotation(&format!("pinion drift: {message}"));
        }
    }
    for disagreement in &report.disagreements {
        let pairs: Vec<String> = disagreement
            .digests
            .iter()
            .map(|(target, digest)| format!("{target}=`{digest}`"))
            .collect();
        eprintln!(
            "warning: targets disagree on `{}`/`{}`: {}",
            disagreement.template_name,
            disagreement.region,
            pairs.join(", ")
        );
    }
}
