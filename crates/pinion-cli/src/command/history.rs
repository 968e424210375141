//! `pinion history`: who moved which pin, when, from what; newest first.

use pinion_core::{Region, TemplateName};

use super::{connect, optional_flag};
use crate::ExitCode;
use crate::cli::{Format, HistoryArgs};
use crate::output;
use crate::report;
use crate::target::Preflight;

pub async fn run(args: HistoryArgs) -> ExitCode {
    let remote = args.remote.to_remote();
    let parsed = (|| {
        let template = optional_flag("--template", args.template.as_deref(), TemplateName::parse)?;
        let region = optional_flag("--region", args.region.as_deref(), Region::parse)?;
        if !(1..=1000).contains(&args.limit) {
            return Err("--limit must be from 1 to 1000".to_owned());
        }
        Ok((template, region))
    })();
    let prepared = parsed
        .map_err(Preflight::general)
        .and_then(|query| Ok((query, connect(&remote)?)));
    let ((template, region), (mut targets, client)) = match prepared {
        Ok(prepared) => prepared,
        Err(preflight) => return report::preflight_failed("history", &preflight),
    };
    // `OneRemote` names exactly one control plane.
    let Some(target) = targets.pop() else {
        return report::preflight_failed("history", &Preflight::general("no target"));
    };
    let list = match client
        .history(&target, template.as_ref(), region.as_ref(), args.limit)
        .await
    {
        Ok(list) => list,
        Err(err) => {
            let failure = Preflight {
                problems: vec![(Some(target.name.clone()), err.to_string())],
            };
            return report::preflight_failed("history", &failure);
        }
    };
    match remote.access.format {
        Format::Json => {
            output::json(&list);
        }
        Format::Human => {
            let header = format!(
                "{:>8}  {:<27}  {:<24}  {:<8}  {:<14}  {:<14}  {:<16}  git_sha",
                "revision", "at", "pin", "action", "from", "to", "actor"
            );
            let short = |digest: &str| {
                digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>()
            };
            let lines = list.history.iter().map(|entry| {
                format!(
                    "{:>8}  {:<27}  {:<24}  {:<8}  {:<14}  {:<14}  {:<16}  {}",
                    entry.revision,
                    entry.at,
                    format!("{}/{}", entry.template_name, entry.region),
                    entry.action,
                    entry.from_digest.as_deref().map_or("-".to_owned(), short),
                    short(&entry.to_digest),
                    entry.actor,
                    entry.git_sha.as_deref().unwrap_or("-")
                )
            });
            // A closed stdout (`| head -1`) ends the listing, not the process.
            let mut open = output::line(&header);
            for line in lines {
                open = open && output::line(&line);
            }
            if let Some(before) = list.next_before.filter(|_| open) {
                eprintln!("(more: older entries start below revision {before})");
            }
        }
    }
    ExitCode::Success
}
