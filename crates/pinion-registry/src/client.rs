//! The registry client: one GET per manifest, hashed and checked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pinion_core::{Digest, Repository};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::RegistryError;
use crate::auth::{Challenge, parse_challenge};
use crate::credentials::Credentials;
use crate::image::{Platform, Reference};

/// Every manifest type Pinion resolves: OCI index and manifest, Docker
/// manifest list and v2 manifest.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Manifests are small; a registry sending more is broken or hostile.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Bounds each HTTP request.
    pub timeout: Duration,
    /// Attempts for a transient failure (connection, 429, 5xx), first included.
    pub attempts: u32,
    /// Hosts (`host:port`) reached over plain HTTP although not loopback.
    pub insecure_hosts: Vec<String>,
    pub credentials: Credentials,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            timeout: Duration::from_secs(20),
            attempts: 3,
            insecure_hosts: Vec::new(),
            credentials: Credentials::none(),
        }
    }
}

/// A manifest as fetched: its digest (the SHA-256 of these exact bytes),
/// media type and body.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Vec<u8>,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.media_type.contains("index") || self.media_type.contains("manifest.list")
    }

    /// The digest of the platform's manifest in an index; for a single
    /// manifest, its own digest.
    pub fn platform_digest(&self, platform: &Platform) -> Result<Option<Digest>, String> {
        if !self.is_index() {
            return Ok(Some(self.digest.clone()));
        }
        #[derive(serde::Deserialize)]
        struct Index {
            manifests: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            digest: String,
            platform: Option<EntryPlatform>,
        }
        #[derive(serde::Deserialize)]
        struct EntryPlatform {
            os: String,
            architecture: String,
            variant: Option<String>,
        }
        let index: Index = serde_json::from_slice(&self.body)
            .map_err(|err| format!("the index is not valid JSON: {err}"))?;
        let found = index.manifests.iter().find(|entry| {
            entry.platform.as_ref().is_some_and(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && (platform.variant.is_none() || p.variant == platform.variant)
            })
        });
        found
            .map(|entry| {
                Digest::parse(&entry.digest).map_err(|err| format!("the index lists {err}"))
            })
            .transpose()
    }
}

pub struct Registry {
    http: reqwest::Client,
    settings: RegistrySettings,
    /// Bearer tokens by (host, scope), reused until the registry refuses one.
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Result<Registry, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // Redirects are followed only to fetch content (blob storage
            // behind a registry); credentials are attached per request and
            // reqwest drops the Authorization header on a cross-host hop.
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                RegistryError::Config(format!("cannot set up the HTTP client: {err}"))
            })?;
        Ok(Registry {
            http,
            settings,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Fetches the manifest `reference` names in `repository`, hashes it, and
    /// checks the hash against the registry's claim and, for a digest
    /// reference, against the digest asked for.
    pub async fn manifest(
        &self,
        repository: &Repository,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let endpoint = Endpoint::new(repository, &self.settings);
        let url = format!("{}/manifests/{}", endpoint.base, reference.as_str());
        let response = self.send(&endpoint, Method::GET, &url).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound(format!(
                "`{repository}:{}`",
                reference.as_str()
            )));
        }
        if !status.is_success() {
            return Err(endpoint.unavailable(format!("manifest request answered {status}")));
        }
        let claimed = response
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let body = read_capped(response, &endpoint).await?;
        let hash: [u8; 32] = Sha256::digest(&body).into();
        let digest = Digest::from_sha256(&hash);
        if let Some(claimed) = claimed.filter(|claimed| claimed != digest.as_str()) {
            return Err(endpoint.invalid(format!(
                "`Docker-Content-Digest` says `{}` but the manifest hashes to `{digest}`",
                claimed.chars().take(80).collect::<String>().escape_debug()
            )));
        }
        if let Reference::Digest(asked) = reference {
            if *asked != digest {
                return Err(endpoint.invalid(format!(
                    "asked for `{asked}`, got a manifest hashing to `{digest}`"
                )));
            }
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            media_type_from_body(&body)
        } else {
            media_type
        };
        Ok(Manifest {
            digest,
            media_type,
            body,
        })
    }

    /// Whether the manifest `digest` exists in `repository` (fetched and
    /// verified, not merely claimed).
    pub async fn exists(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        match self
            .manifest(repository, &Reference::Digest(digest.clone()))
            .await
        {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Sends with whatever auth the registry asks for, retrying transient
    /// failures a bounded number of times.
    async fn send(
        &self,
        endpoint: &Endpoint,
        method: Method,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.send_authorized(endpoint, method.clone(), url).await {
                Ok(response)
                    if (response.status().is_server_error()
                        || response.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt < self.settings.attempts =>
                {
                    tracing::debug!(status = %response.status(), attempt, "registry failed; retrying");
                }
                Err(RegistryError::Unavailable { reason, .. })
                    if attempt < self.settings.attempts =>
                {
                    tracing::debug!(%reason, attempt, "registry unreachable; retrying");
                }
                other => return other,
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    async fn send_authorized(
        &self,
        endpoint: &Endpoint,
        method: Method,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let scope = format!("repository:{}:pull", endpoint.path);
        let cache_key = (endpoint.host.clone(), scope.clone());
        let cached = self
            .tokens
            .lock()
            .ok()
            .and_then(|tokens| tokens.get(&cache_key).cloned());
        let request = |auth: Option<Auth>| {
            let mut request = self
                .http
                .request(method.clone(), url)
                .header(ACCEPT, MANIFEST_TYPES);
            match auth {
                Some(Auth::Bearer(token)) => request = request.bearer_auth(token),
                Some(Auth::Basic(username, password)) => {
                    request = request.basic_auth(username, Some(password))
                }
                None => {}
            }
            request
        };
        let first = request(cached.map(Auth::Bearer))
            .send()
            .await
            .map_err(|err| endpoint.unavailable(describe(&err)))?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(parse_challenge);
        let basic = self
            .settings
            .credentials
            .for_host(&endpoint.credential_host);
        let auth = match challenge {
            Some(Challenge::Basic) => {
                let basic = basic.ok_or_else(|| {
                    endpoint.unauthorized(
                        "credentials are required and none are configured for this host",
                    )
                })?;
                Auth::Basic(basic.username.clone(), basic.password.clone())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let scope = challenge_scope.unwrap_or(scope);
                let token = self
                    .fetch_token(endpoint, &realm, service.as_deref(), &scope)
                    .await?;
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(cache_key, token.clone());
                }
                Auth::Bearer(token)
            }
            None => {
                return Err(
                    endpoint.unauthorized("401 without a usable `WWW-Authenticate` challenge")
                );
            }
        };
        let second = request(Some(auth))
            .send()
            .await
            .map_err(|err| endpoint.unavailable(describe(&err)))?;
        match second.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(endpoint.unauthorized(
                format!("{} with the configured credentials", second.status()),
            )),
            _ => Ok(second),
        }
    }

    /// The bearer-token dance: GET the realm with service and scope, using
    /// basic credentials when there are some (anonymous otherwise).
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|_| endpoint.invalid("the token realm is not a URL".into()))?;
        let realm_host = url.host_str().unwrap_or_default().to_owned();
        let realm_port = url
            .port()
            .map(|port| format!("{realm_host}:{port}"))
            .unwrap_or(realm_host.clone());
        if url.scheme() != "https"
            && !(is_loopback(&realm_host) || self.settings.insecure_hosts.contains(&realm_port))
        {
            return Err(endpoint.invalid(format!(
                "the token realm `{realm_host}` is plain HTTP; credentials are not sent there"
            )));
        }
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(service) = service {
                pairs.append_pair("service", service);
            }
            pairs.append_pair("scope", scope);
        }
        let mut request = self.http.get(url);
        if let Some(basic) = self
            .settings
            .credentials
            .for_host(&endpoint.credential_host)
        {
            request = request.basic_auth(&basic.username, Some(&basic.password));
        }
        let response = request
            .send()
            .await
            .map_err(|err| endpoint.unavailable(describe(&err)))?;
        match response.status() {
            status if status.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(endpoint
                    .unauthorized(format!("the token service answered {}", response.status())));
            }
            status => {
                return Err(endpoint.unavailable(format!("the token service answered {status}")));
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_capped(response, endpoint).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            endpoint.invalid("the token service answered something that is not a token".into())
        })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| endpoint.invalid("the token service answered no token".into()))
    }
}

enum Auth {
    Bearer(String),
    Basic(String, String),
}

/// Where a repository's API lives.
struct Endpoint {
    /// `host[:port]` as named in the repository.
    host: String,
    /// The host credentials are filed under (`docker.io` for Docker Hub).
    credential_host: String,
    /// The repository path inside the registry.
    path: String,
    /// `scheme://api-host/v2/<path>`.
    base: String,
}

impl Endpoint {
    fn new(repository: &Repository, settings: &RegistrySettings) -> Endpoint {
        let (host, path) = repository.split_host();
        let (api_host, path) = if host == "docker.io" {
            let path = if path.contains('/') {
                path.to_owned()
            } else {
                format!("library/{path}")
            };
            ("registry-1.docker.io".to_owned(), path)
        } else {
            (host.to_owned(), path.to_owned())
        };
        let hostname = api_host.split(':').next().unwrap_or_default();
        let plain = is_loopback(hostname) || settings.insecure_hosts.contains(&api_host);
        let scheme = if plain { "http" } else { "https" };
        Endpoint {
            base: format!("{scheme}://{api_host}/v2/{path}"),
            host: api_host,
            credential_host: host.to_owned(),
            path,
        }
    }

    fn unavailable(&self, reason: String) -> RegistryError {
        RegistryError::Unavailable {
            host: self.host.clone(),
            reason,
        }
    }

    fn unauthorized(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Unauthorized {
            host: self.host.clone(),
            reason: reason.into(),
        }
    }

    fn invalid(&self, reason: String) -> RegistryError {
        RegistryError::Invalid {
            host: self.host.clone(),
            reason,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a body of at most `MAX_MANIFEST_BYTES`, refusing early on a larger
/// `Content-Length` and stopping as soon as the limit is passed.
async fn read_capped(
    mut response: reqwest::Response,
    endpoint: &Endpoint,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || {
        endpoint.invalid(format!(
            "the answer is larger than {MAX_MANIFEST_BYTES} bytes"
        ))
    };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_MANIFEST_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(4096).min(MAX_MANIFEST_BYTES));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| endpoint.unavailable(describe(&err)))?
    {
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Registries that answer `application/json` still put `mediaType` in the body.
fn media_type_from_body(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            json.get("mediaType")
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// An error and its causes on one line.
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if err.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

/// What a repository's tag points at: `Ok(None)` when the tag does not exist,
/// `Err` with a one-line reason when the lookup failed.
pub type TagAnswer = Result<Option<Digest>, String>;

/// Resolves `tag` in every repository, at most `concurrency` lookups at once.
pub async fn resolve_tags(
    registry: std::sync::Arc<Registry>,
    repositories: impl IntoIterator<Item = Repository>,
    tag: &crate::Tag,
    concurrency: usize,
) -> HashMap<Repository, TagAnswer> {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut lookups = tokio::task::JoinSet::new();
    for repository in repositories {
        let (registry, limit, tag) = (registry.clone(), limit.clone(), tag.clone());
        lookups.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let answer = match registry.manifest(&repository, &Reference::Tag(tag)).await {
                Ok(manifest) => Ok(Some(manifest.digest)),
                Err(RegistryError::NotFound(_)) => Ok(None),
                Err(err) => Err(err.to_string()),
            };
            (repository, answer)
        });
    }
    let mut answers = HashMap::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((repository, answer)) = joined {
            answers.insert(repository, answer);
        }
    }
    answers
}
