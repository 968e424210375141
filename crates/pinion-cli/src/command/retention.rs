//! `pinion retention`: every image reference a registry clean-up must keep,
//! one per line, ready to be an exclusion list; `--format json` for the
//! reasons.

use super::connect;
use crate::ExitCode;
use crate::cli::{Format, RetentionArgs};
use crate::output;
use crate::report;
use crate::target::Preflight;

pub async fn run(args: RetentionArgs) -> ExitCode {
    let remote = args.remote.to_remote();
    if !(1..=100).contains(&args.history) {
        return report::preflight_failed(
            "retention",
            &Preflight::general("--history must be from 1 to 100"),
        );
    }
    let (mut targets, client) = match connect(&remote) {
        Ok(connected) => connected,
        Err(preflight) => return report::preflight_failed("retention", &preflight),
    };
    let Some(target) = targets.pop() else {
        return report::preflight_failed("retention", &Preflight::general("no target"));
    };
    let retention = match client.retention(&target, args.history).await {
        Ok(retention) => retention,
        Err(err) => {
            let failure = Preflight {
                problems: vec![(Some(target.name.clone()), err.to_string())],
            };
            return report::preflight_failed("retention", &failure);
        }
    };
    match remote.access.format {
        Format::Json => {
            output::json(&retention);
        }
        Format::Human => {
            for retained in &retention.retain {
                if !output::line(&retained.image_ref) {
                    break;
                }
            }
        }
    }
    ExitCode::Success
}
