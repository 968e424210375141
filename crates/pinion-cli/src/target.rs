//! Which control planes a command talks to, and with which token: `--server`
//! or `--target NAME=URL`, resolved before the first request. Every target's
//! problem is found, not just the first, so a pipeline's summary names each.

use reqwest::Url;

use crate::cli::Remote;

/// One control plane to talk to.
pub struct Target {
    /// `server` for `--server`, else the `NAME` of `--target NAME=URL`.
    pub name: String,
    pub base: Url,
    /// Held only to put in the `Authorization` header; never printed.
    pub token: String,
}

/// The variable `--token-env` reads unless told otherwise.
pub const DEFAULT_TOKEN_ENV: &str = "PINION_TOKEN";

/// What stops a command before its first request: each problem, with the
/// target it concerns (`None`: the command as a whole, e.g. a bad flag).
#[derive(Debug, Default)]
pub struct Preflight {
    pub problems: Vec<(Option<String>, String)>,
}

impl Preflight {
    /// A problem of the command as a whole.
    pub fn general(reason: impl Into<String>) -> Preflight {
        Preflight {
            problems: vec![(None, reason.into())],
        }
    }

    /// The targets named in the problems, in order.
    pub fn targets(&self) -> Vec<&str> {
        self.problems
            .iter()
            .filter_map(|(target, _)| target.as_deref())
            .collect()
    }

    /// Each problem as one line: `NAME: reason`, or the reason alone.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(target, reason)| match target {
                Some(name) => format!("{name}: {reason}"),
                None => reason.clone(),
            })
            .collect()
    }
}

impl From<String> for Preflight {
    fn from(reason: String) -> Preflight {
        Preflight::general(reason)
    }
}

/// Resolves `--server` / `--target` and their tokens before any request.
/// `env` reads a variable (the process environment, or a test's map).
pub fn parse_targets(
    remote: &Remote,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Target>, Preflight> {
    let mut named: Vec<(String, String, Result<String, String>)> = Vec::new();
    // `PINION_SERVER` stands in for `--server` when no target is named.
    let server = remote.server.clone().or_else(|| {
        remote
            .targets
            .is_empty()
            .then(|| env("PINION_SERVER"))
            .flatten()
            .map(|server| server.trim().to_owned())
            .filter(|server| !server.is_empty())
    });
    if let Some(server) = &server {
        named.push((
            "server".into(),
            server.clone(),
            token_variable(&remote.access.token_env),
        ));
    }
    for spec in &remote.targets {
        let (name, url) = spec.split_once('=').ok_or_else(|| {
            Preflight::general(format!(
                "--target `{}` must be NAME=URL",
                spec.escape_debug()
            ))
        })?;
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(Preflight::general(format!(
                "--target name `{}` must be letters, digits, `-` or `_`",
                name.escape_debug()
            )));
        }
        if named
            .iter()
            .any(|(other, _, _)| other.eq_ignore_ascii_case(name))
        {
            return Err(Preflight::general(format!(
                "--target `{name}` is given twice"
            )));
        }
        let variable = format!(
            "PINION_TOKEN_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        named.push((name.to_owned(), url.to_owned(), Ok(variable)));
    }
    if named.is_empty() {
        return Err(Preflight::general(
            "give --server URL (or set PINION_SERVER) or at least one --target NAME=URL",
        ));
    }
    let mut targets = Vec::new();
    let mut preflight = Preflight::default();
    for (name, url, variable) in named {
        let resolved = parse_server_url(&url, remote.access.allow_insecure_http).and_then(|base| {
            let variable = variable?;
            let token = env(&variable)
                .map(|token| token.trim().to_owned())
                .filter(|token| !token.is_empty())
                .ok_or_else(|| unset_message(&variable))?;
            Ok(Target {
                name: name.clone(),
                base,
                token,
            })
        });
        match resolved {
            Ok(target) => targets.push(target),
            Err(reason) => preflight.problems.push((Some(name), reason)),
        }
    }
    if preflight.problems.is_empty() {
        Ok(targets)
    } else {
        Err(preflight)
    }
}

/// The variable `--token-env` names, checked without ever echoing it: a
/// token pasted there by mistake must not be printed in the error.
fn token_variable(value: &str) -> Result<String, String> {
    if looks_like_secret(value) {
        return Err(
            "--token-env takes the name of a variable that holds the token, not a token; \
             that value was not used and is not shown"
                .into(),
        );
    }
    let valid = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(
            "--token-env must be a variable name (letters, digits and `_`); the value is not shown"
                .into(),
        );
    }
    Ok(value.to_owned())
}

/// `pinion_` and hex, as `pinion token create` prints them.
fn looks_like_secret(value: &str) -> bool {
    value
        .strip_prefix(pinion_server::token::SECRET_PREFIX)
        .is_some_and(|rest| rest.len() >= 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn unset_message(variable: &str) -> String {
    if variable == DEFAULT_TOKEN_ENV || variable.starts_with("PINION_TOKEN_") {
        format!("the token variable `{variable}` is unset or empty")
    } else {
        // A name the user chose: named by its flag, never echoed.
        "the token variable named by --token-env is unset or empty".to_owned()
    }
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

/// The process environment, for [`parse_targets`].
pub fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
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

    #[test]
    fn a_token_given_as_the_variable_name_is_refused_and_never_echoed() {
        let secret = format!("pinion_{}", "ab".repeat(32));
        let err = token_variable(&secret).unwrap_err();
        assert!(!err.contains(&secret) && !err.contains("abab"), "{err}");
        let err = token_variable("not a name!").unwrap_err();
        assert!(!err.contains("not a name"), "{err}");
        assert_eq!(
            token_variable("CP_ADMIN_API_TOKEN").unwrap(),
            "CP_ADMIN_API_TOKEN"
        );
        assert!(!unset_message("MY_SECRET_VAR").contains("MY_SECRET_VAR"));
    }

    #[test]
    fn every_target_with_a_problem_is_named() {
        let remote = Remote {
            server: None,
            targets: vec![
                "staging=http://127.0.0.1:1".into(),
                "prod=http://127.0.0.1:2".into(),
                "dev=http://127.0.0.1:3".into(),
            ],
            access: crate::cli::Access {
                token_env: DEFAULT_TOKEN_ENV.into(),
                timeout: 30,
                allow_insecure_http: false,
                ca_cert: None,
                format: crate::cli::Format::Human,
            },
        };
        let env = |name: &str| (name == "PINION_TOKEN_STAGING").then(|| "pinion_x".to_owned());
        let preflight = parse_targets(&remote, &env).err().unwrap();
        assert_eq!(preflight.targets(), ["prod", "dev"]);
        assert!(preflight.lines()[0].contains("`PINION_TOKEN_PROD` is unset"));
    }
}
