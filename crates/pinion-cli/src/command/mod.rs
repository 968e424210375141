//! One module per subcommand. Each parses its arguments into domain values
//! before any IO (a failure there is a [`Preflight`]), then runs and returns
//! the exit code.

pub mod digest;
pub mod docs;
pub mod drift;
pub mod history;
pub mod hold;
pub mod promote;
pub mod retention;
pub mod rollback;
pub mod serve;
pub mod status;
pub mod template;
pub mod token;
pub mod verify;
pub mod watch;

use std::time::Duration;

use pinion_core::ParseError;

use crate::cli::Remote;
use crate::client::Client;
use crate::target::{Preflight, Target, environment, parse_targets};

/// A flag's value parsed, or the flag named in the reason.
fn flag<T>(name: &str, parsed: Result<T, ParseError>) -> Result<T, String> {
    parsed.map_err(|err| format!("{name}: {err}"))
}

/// An optional flag's value parsed.
fn optional_flag<T>(
    name: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, String> {
    value.map(|value| flag(name, parse(value))).transpose()
}

/// `--timeout`, checked.
fn timeout(remote: &Remote) -> Result<Duration, String> {
    if remote.access.timeout == 0 || remote.access.timeout > 3600 {
        return Err("--timeout must be from 1 to 3600 seconds".into());
    }
    Ok(Duration::from_secs(remote.access.timeout))
}

/// `--ca-cert`, read and parsed before any request.
fn ca_cert(remote: &Remote) -> Result<Option<reqwest::Certificate>, String> {
    let Some(path) = &remote.access.ca_cert else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|err| format!("--ca-cert {}: {err}", path.display()))?;
    let certificate = reqwest::Certificate::from_pem(&pem)
        .map_err(|err| format!("--ca-cert {}: not a PEM certificate: {err}", path.display()))?;
    Ok(Some(certificate))
}

/// The targets and a client for them, before any request.
fn connect(remote: &Remote) -> Result<(Vec<Target>, Client), Preflight> {
    let targets = parse_targets(remote, &environment)?;
    let ca = ca_cert(remote).map_err(Preflight::general)?;
    let client =
        Client::new(timeout(remote)?, ca).map_err(|err| Preflight::general(err.to_string()))?;
    Ok((targets, client))
}

/// `300` (seconds), `30s`, `5m`, `1h`, `7d` or `500ms`; at least 100 ms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!(
            "`{}` must be a number with an optional unit (ms, s, m, h, d)",
            text.escape_debug()
        )
    })?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(number),
        "ms" => Duration::from_millis(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        "d" => Duration::from_secs(number.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "unit `{}` must be ms, s, m, h or d",
                unit.escape_debug()
            ));
        }
    };
    if duration < Duration::from_millis(100) {
        return Err("a duration must be at least 100ms".into());
    }
    Ok(duration)
}
