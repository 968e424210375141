//! A typed client for the control plane's API, used by `promote` and
//! `verify`. It never follows a redirect (the token must not reach another
//! host), bounds every request, and retries only what is safe and transient.

use std::time::Duration;

use pinion_api::{
    ErrorBody, HistoryList, Pin, PinList, PinResponse, PromoteRequest, RollbackRequest,
};
use reqwest::{StatusCode, Url};

/// One control plane to talk to.
pub struct Target {
    /// `server` for `--server`, else the `NAME` of `--target NAME=URL`.
    pub name: String,
    pub base: Url,
    /// Held only to put in the `Authorization` header; never printed.
    pub token: String,
}

/// Total attempts for a transient failure (the first one included).
const ATTEMPTS: u32 = 3;

pub struct Client {
    http: reqwest::Client,
    timeout: Duration,
}

/// What a promotion got back.
pub struct Promoted {
    pub status: StatusCode,
    pub pin: Pin,
}

impl Client {
    pub fn new(timeout: Duration) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("could not set up the HTTP client: {}", describe(&err)))?;
        Ok(Client { http, timeout })
    }

    /// Promotes; succeeds only on 200/201 whose pin carries the digest asked for.
    pub async fn promote(
        &self,
        target: &Target,
        request: &PromoteRequest,
    ) -> Result<Promoted, String> {
        let region = request.region.as_deref().unwrap_or("global");
        self.post_for_pin(target, "cp/admin/runtime-image/promote", request, |pin| {
            pin.template_name == request.template_name
                && pin.region == region
                && pin.image_digest == request.image_digest
        })
        .await
    }

    /// Rolls back; succeeds only on 200/201 with a pin of that template and
    /// region (at `to_digest`, when one was asked for).
    pub async fn rollback(
        &self,
        target: &Target,
        request: &RollbackRequest,
    ) -> Result<Promoted, String> {
        let region = request.region.as_deref().unwrap_or("global");
        self.post_for_pin(target, "cp/admin/runtime-image/rollback", request, |pin| {
            pin.template_name == request.template_name
                && pin.region == region
                && request
                    .to_digest
                    .as_ref()
                    .is_none_or(|to| *to == pin.image_digest)
        })
        .await
    }

    /// POSTs and accepts only a 200/201 `{"pin"}` answer that `expected` holds for.
    async fn post_for_pin(
        &self,
        target: &Target,
        path: &str,
        request: &impl serde::Serialize,
        expected: impl Fn(&Pin) -> bool,
    ) -> Result<Promoted, String> {
        let url = endpoint(&target.base, path);
        let (status, body) = self
            .send(target, || self.http.post(url.clone()).json(request))
            .await?;
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(unexpected_status(status, &body));
        }
        let response: PinResponse = serde_json::from_slice(&body).map_err(|err| {
            format!(
                "server answered {} but the body is not a pin ({err}): {}",
                status.as_u16(),
                preview(&body)
            )
        })?;
        let pin = response.pin;
        if !expected(&pin) {
            return Err(format!(
                "server answered {} but the returned pin is `{}`/`{}` at `{}`, which is not what was asked",
                status.as_u16(),
                pin.template_name,
                pin.region,
                pin.image_digest
            ));
        }
        Ok(Promoted { status, pin })
    }

    /// GETs an API path and decodes the JSON answer; any status but 200 is an error.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
    ) -> Result<T, String> {
        let url = endpoint(&target.base, path);
        let (status, body) = self.send(target, || self.http.get(url.clone())).await?;
        if status != StatusCode::OK {
            return Err(unexpected_status(status, &body));
        }
        serde_json::from_slice(&body).map_err(|err| {
            format!(
                "server answered 200 to `/{path}` with an unexpected body ({err}): {}",
                preview(&body)
            )
        })
    }

    /// One page of history, newest first.
    pub async fn history(
        &self,
        target: &Target,
        template: Option<&str>,
        region: Option<&str>,
        limit: u32,
    ) -> Result<HistoryList, String> {
        let mut url = endpoint(&target.base, "cp/admin/runtime-image/history");
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(template) = template {
                pairs.append_pair("template_name", template);
            }
            if let Some(region) = region {
                pairs.append_pair("region", region);
            }
            pairs.append_pair("limit", &limit.to_string());
        }
        let (status, body) = self.send(target, || self.http.get(url.clone())).await?;
        if status != StatusCode::OK {
            return Err(unexpected_status(status, &body));
        }
        serde_json::from_slice(&body).map_err(|err| {
            format!(
                "server answered 200 but the body is not a history ({err}): {}",
                preview(&body)
            )
        })
    }

    /// Lists the pins of one template and region (the server filters; the
    /// caller still checks each row).
    pub async fn list_pins(
        &self,
        target: &Target,
        template: &str,
        region: &str,
    ) -> Result<Vec<Pin>, String> {
        let mut url = endpoint(&target.base, "cp/admin/runtime-image");
        url.query_pairs_mut()
            .append_pair("template_name", template)
            .append_pair("region", region);
        let (status, body) = self.send(target, || self.http.get(url.clone())).await?;
        if status != StatusCode::OK {
            return Err(unexpected_status(status, &body));
        }
        let list: PinList = serde_json::from_slice(&body).map_err(|err| {
            format!(
                "server answered 200 but the body is not a pin list ({err}): {}",
                preview(&body)
            )
        })?;
        Ok(list.pins)
    }

    /// Sends with the token, retrying connection failures, 408, 429 and 5xx
    /// with backoff. Timeouts are not retried: a server that did not answer
    /// in time has had its chance, and the step must end in bounded time.
    async fn send(
        &self,
        target: &Target,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let sent = build().bearer_auth(&target.token).send().await;
            let failure = match sent {
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await;
                    match body {
                        Ok(body) if !is_transient(status) => return Ok((status, body.to_vec())),
                        Ok(body) => unexpected_status(status, &body),
                        Err(err) if err.is_timeout() => {
                            return Err(format!(
                                "no complete answer within {}s",
                                self.timeout.as_secs()
                            ));
                        }
                        Err(err) => format!("could not read the answer: {}", describe(&err)),
                    }
                }
                Err(err) if err.is_timeout() => {
                    return Err(format!("no answer within {}s", self.timeout.as_secs()));
                }
                Err(err) => describe(&err),
            };
            if attempt == ATTEMPTS {
                return Err(format!("{failure} (gave up after {ATTEMPTS} attempts)"));
            }
            eprintln!(
                "warning: {}: attempt {attempt}/{ATTEMPTS} failed: {failure}; retrying in {:.1}s",
                target.name,
                backoff.as_secs_f64()
            );
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err("no attempt was made".to_owned())
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `base` joined with an API path, keeping any path prefix `base` has.
fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}/{path}"));
    url.set_query(None);
    url
}

/// One line describing a non-success answer, using the contract's error body
/// when there is one.
fn unexpected_status(status: StatusCode, body: &[u8]) -> String {
    if status.is_redirection() {
        return format!(
            "server answered {} (a redirect); redirects are not followed so the token never reaches another host",
            status.as_u16()
        );
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => format!(
            "server answered {} {}: {}",
            status.as_u16(),
            one_line(&error.error.code),
            one_line(&error.error.message)
        ),
        Err(_) if body.is_empty() => {
            format!("server answered {} with an empty body", status.as_u16())
        }
        Err(_) => format!("server answered {}: {}", status.as_u16(), preview(body)),
    }
}

/// The start of a body, on one line, for messages about unexpected answers.
fn preview(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let mut shown: String = one_line(&text).chars().take(120).collect();
    if text.chars().count() > 120 {
        shown.push('…');
    }
    format!("`{shown}`")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its causes on one line, without repeats.
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    one_line(&parts.join(": "))
}
