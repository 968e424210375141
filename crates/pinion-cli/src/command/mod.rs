//! One module per subcommand. Each parses its arguments into domain values
//! before any IO (a failure there is a [`Preflight`]), then runs and returns
//! the exit code.

pub mod digest;
pub mod drift;
pub mod history;
pub mod promote;
pub mod rollback;
pub mod serve;
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

/// The targets and a client for them, before any request.
fn connect(remote: &Remote) -> Result<(Vec<Target>, Client), Preflight> {
    let targets = parse_targets(remote, &environment)?;
    let client =
        Client::new(timeout(remote)?).map_err(|err| Preflight::general(err.to_string()))?;
    Ok((targets, client))
}
