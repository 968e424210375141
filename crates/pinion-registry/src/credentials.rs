//! Registry credentials from the docker config file, the same file `docker
//! login`, `skopeo login` and `podman login` write. Passwords stay in memory:
//! `Debug` shows only host names and no error message carries one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::RegistryError;

#[derive(Clone)]
pub(crate) struct Basic {
    pub username: String,
    pub password: String,
}

/// Username and password per registry host.
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, Basic>,
    source: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hosts: Vec<&String> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("Credentials")
            .field("hosts", &hosts)
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// The first of `candidates` that is a file; none at all is not an
    /// error. The caller names the candidates (the CLI: `$REGISTRY_AUTH_FILE`,
    /// `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`): this crate
    /// reads no environment.
    pub fn from_first_file(
        candidates: impl IntoIterator<Item = PathBuf>,
    ) -> Result<Credentials, RegistryError> {
        for path in candidates {
            if path.is_file() {
                return Credentials::from_file(&path);
            }
        }
        Ok(Credentials::none())
    }

    pub fn from_file(path: &Path) -> Result<Credentials, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            RegistryError::Config(format!(
                "cannot read registry credentials `{}`: {err}",
                path.display()
            ))
        })?;
        let mut credentials = Credentials::parse(&text).map_err(|reason| {
            RegistryError::Config(format!(
                "registry credentials `{}`: {reason}",
                path.display()
            ))
        })?;
        credentials.source = Some(path.to_owned());
        Ok(credentials)
    }

    /// Parses `{"auths": {"host": {"auth": base64("user:pass")}}}` (or
    /// `username` / `password` fields). Errors never quote the file.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|err| format!("not JSON (line {})", err.line()))?;
        let mut by_host = HashMap::new();
        let Some(auths) = json.get("auths").and_then(|auths| auths.as_object()) else {
            return Ok(Credentials::default());
        };
        for (key, entry) in auths {
            let host = normalize_host(key);
            let basic = if let Some(encoded) = entry.get("auth").and_then(|auth| auth.as_str()) {
                if encoded.is_empty() {
                    continue;
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| format!("the `auth` of `{host}` is not base64"))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| format!("the `auth` of `{host}` is not UTF-8"))?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("the `auth` of `{host}` is not `user:password`"))?;
                Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            } else {
                let field = |name: &str| {
                    entry
                        .get(name)
                        .and_then(|value| value.as_str())
                        .map(str::to_owned)
                };
                match (field("username"), field("password")) {
                    (Some(username), Some(password)) => Basic { username, password },
                    _ => continue,
                }
            };
            by_host.insert(host, basic);
        }
        Ok(Credentials {
            by_host,
            source: None,
        })
    }

    pub(crate) fn for_host(&self, host: &str) -> Option<&Basic> {
        self.by_host.get(&normalize_host(host))
    }

    /// The hosts that have credentials (never the credentials).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.by_host.keys().cloned().collect();
        hosts.sort();
        hosts
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `localhost:5000` stays.
fn normalize_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_auths() {
        let config = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "localhost:5000": {"username": "ci", "password": "s3cret"},
            "ghcr.io": {"auth": ""}
        }, "credsStore": "desktop"}"#;
        let credentials = Credentials::parse(config).unwrap();
        let hub = credentials.for_host("registry-1.docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pass")
        );
        assert_eq!(
            credentials.for_host("localhost:5000").unwrap().password,
            "s3cret"
        );
        assert!(credentials.for_host("ghcr.io").is_none());
        assert_eq!(credentials.hosts(), ["docker.io", "localhost:5000"]);
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pass\""),
            "{shown}"
        );
    }

    #[test]
    fn bad_files_are_errors_that_quote_nothing() {
        for bad in [
            r#"{"auths": {"x": {"auth": "!!!s3cret"}}}"#,
            "s3cret not json",
            r#"{"auths": {"x": {"auth": "czNjcmV0"}}}"#,
        ] {
            let err = Credentials::parse(bad).unwrap_err();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
