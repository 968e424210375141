//! A typed client for the control plane's API, used by every remote
//! command. It never follows a redirect (the token must not reach another
//! host), bounds every request, and retries only what is safe and transient.
//! Its errors say which kind of failure it was, so a caller can tell a 409
//! from a DNS failure.

use std::time::Duration;

use pinion_api::{
    ErrorBody, HistoryList, Hold, HoldRequest, HoldResponse, Pin, PinList, PinResponse,
    PromoteRequest, RollbackRequest,
};
use pinion_core::{EventType, Region, TemplateName};
use reqwest::{StatusCode, Url};

use crate::target::Target;

/// Why a request did not give the answer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The server answered, with a status that is not the one asked for:
    /// its code and message when the body is the contract's error body.
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
        /// The server's `x-request-id`: what finds its log line.
        request_id: Option<String>,
    },
    /// No (complete) answer: the connection failed, timed out or broke.
    Transport(String),
    /// An answer that cannot be used: not the body or the pin asked for.
    Protocol(String),
    /// A write that may or may not have been made: the server said its
    /// commit did not finish in time (`504 commit_outcome_unknown`), or no
    /// answer of the server's own came after the request was sent. Settled
    /// by reading back (see [`Client::promote`]).
    Unknown(String),
}

/// ` (request id X)`, so an operator can find the server's log line.
fn write_request_id(f: &mut std::fmt::Formatter<'_>, id: Option<&str>) -> std::fmt::Result {
    match id {
        Some(id) => write!(f, " (request id {id})"),
        None => Ok(()),
    }
}

/// The `x-request-id` of an answer, if it is plain text.
fn request_id_of(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
}

impl ClientError {
    /// The same refusal, naming the server's request id.
    fn with_request_id(self, id: Option<String>) -> ClientError {
        match self {
            ClientError::Refused {
                status,
                code,
                message,
                ..
            } => ClientError::Refused {
                status,
                code,
                message,
                request_id: id,
            },
            other => other,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused {
                status,
                code: Some(code),
                message,
                request_id,
            } => {
                write!(f, "server answered {status} {code}: {message}")?;
                write_request_id(f, request_id.as_deref())
            }
            ClientError::Refused {
                code: None,
                message,
                request_id,
                ..
            } => {
                f.write_str(message)?;
                write_request_id(f, request_id.as_deref())
            }
            ClientError::Transport(reason)
            | ClientError::Protocol(reason)
            | ClientError::Unknown(reason) => f.write_str(reason),
        }
    }
}

/// Total attempts for a transient failure (the first one included).
const ATTEMPTS: u32 = 3;

pub struct Client {
    http: reqwest::Client,
    /// For streams: no bound on the whole answer, only on each read (the
    /// server sends a comment every 10 s).
    streaming: reqwest::Client,
    timeout: Duration,
}

/// How long a stream may stay silent before it is taken for dead.
const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// An open event stream.
pub struct EventStream {
    response: reqwest::Response,
    parser: crate::sse::Parser,
}

impl EventStream {
    /// The messages of the next chunk; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Vec<crate::sse::Message>>, ClientError> {
        match self.response.chunk().await {
            Ok(Some(chunk)) => self
                .parser
                .feed(&chunk)
                .map(Some)
                .map_err(ClientError::Protocol),
            Ok(None) => Ok(None),
            Err(err) => Err(ClientError::Transport(describe(&err))),
        }
    }
}

/// What a promotion got back.
pub struct Promoted {
    pub status: StatusCode,
    pub pin: Pin,
    /// How the outcome was learnt when the answer did not say: the write's
    /// outcome was unknown and the pin was read back.
    pub settled: Option<String>,
    /// The server said this created the first pin of its region.
    pub new_region: bool,
}

/// What a hold or a release got back.
pub struct Held {
    pub status: StatusCode,
    pub hold: Hold,
}

/// A `{"hold"}` answer, for the pin asked about.
fn held(
    status: StatusCode,
    body: &[u8],
    template: &str,
    region: &str,
) -> Result<Held, ClientError> {
    let response: HoldResponse = serde_json::from_slice(body).map_err(|err| {
        ClientError::Protocol(format!(
            "server answered {} but the body is not a hold ({err}): {}",
            status.as_u16(),
            preview(body)
        ))
    })?;
    if response.hold.template_name != template || response.hold.region != region {
        return Err(ClientError::Protocol(format!(
            "server answered {} about `{}`/`{}`, which is not the pin asked about",
            status.as_u16(),
            response.hold.template_name,
            response.hold.region
        )));
    }
    Ok(Held {
        status,
        hold: response.hold,
    })
}

/// Whether a request may be sent again after a failure that leaves its
/// outcome open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A read: any transient failure is retried.
    Read,
    /// A write: retried only when the server itself said nothing changed
    /// (its error body with a code, on 408, 429 and 5xx other than
    /// `commit_outcome_unknown`), or when it was never sent (no
    /// connection). Anything else is [`ClientError::Unknown`].
    Write,
}

/// How much less than its own timeout a client tells the server it will
/// wait (`x-pinion-timeout`): room for the answer to travel back.
fn server_deadline(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_secs(1)))
}

impl Client {
    /// A client with `timeout` for each request, trusting `ca` (a private
    /// CA) beside the built-in roots.
    pub fn new(timeout: Duration, ca: Option<reqwest::Certificate>) -> Result<Client, ClientError> {
        let trusting = |builder: reqwest::ClientBuilder| match &ca {
            Some(ca) => builder.add_root_certificate(ca.clone()),
            None => builder,
        };
        let http = trusting(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                ClientError::Transport(format!(
                    "could not set up the HTTP client: {}",
                    describe(&err)
                ))
            })?;
        let streaming = trusting(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .read_timeout(STREAM_SILENCE)
            .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                ClientError::Transport(format!(
                    "could not set up the HTTP client: {}",
                    describe(&err)
                ))
            })?;
        Ok(Client {
            http,
            streaming,
            timeout,
        })
    }

    /// Opens the event stream after `last_id` (`Last-Event-ID`), or from
    /// now on when there is none, with the filters given. Any status but 200
    /// is a refusal.
    pub async fn stream_events(
        &self,
        target: &Target,
        template: Option<&TemplateName>,
        types: &[EventType],
        last_id: Option<i64>,
    ) -> Result<EventStream, ClientError> {
        let mut url = endpoint(&target.base, "cp/events");
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(template) = template {
                pairs.append_pair("template_name", template.as_str());
            }
            for kind in types {
                pairs.append_pair("type", kind.as_str());
            }
        }
        let mut request = self
            .streaming
            .get(url)
            .bearer_auth(&target.token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last_id) = last_id {
            request = request.header("last-event-id", last_id.to_string());
        }
        let sent = request
            .send()
            .await
            .map_err(|err| ClientError::Transport(describe(&err)))?;
        let status = sent.status();
        if status != StatusCode::OK {
            let id = request_id_of(sent.headers());
            let body = sent.bytes().await.unwrap_or_default();
            return Err(refused(status, &body).with_request_id(id));
        }
        Ok(EventStream {
            response: sent,
            parser: crate::sse::Parser::default(),
        })
    }

    /// Promotes; succeeds only on 200/201 whose pin carries the digest asked
    /// for. When the outcome is unknown (a `504 commit_outcome_unknown`, or
    /// no answer after the request went out), it is settled by reading the
    /// pin back: success only if the pin is the digest.
    pub async fn promote(
        &self,
        target: &Target,
        request: &PromoteRequest,
    ) -> Result<Promoted, ClientError> {
        let region = request.region.as_deref().unwrap_or("global");
        let answered = self
            .post_for_pin(target, "cp/admin/runtime-image/promote", request, |pin| {
                pin.template_name == request.template_name
                    && pin.region == region
                    && pin.image_digest == request.image_digest
            })
            .await;
        match answered {
            Err(ClientError::Unknown(why)) => {
                self.settle(
                    target,
                    &request.template_name,
                    region,
                    &request.image_digest,
                    &why,
                )
                .await
            }
            other => other,
        }
    }

    /// Reads the pin back after a promotion whose outcome is unknown, until
    /// it shows the digest or this client's timeout has passed once more.
    /// The server never commits a write after its deadline unless the
    /// commit was already under way, so the wait is for that commit alone.
    async fn settle(
        &self,
        target: &Target,
        template: &str,
        region: &str,
        digest: &str,
        why: &str,
    ) -> Result<Promoted, ClientError> {
        eprintln!(
            "warning: {}: {why}; reading the pin back to settle whether it moved",
            target.name
        );
        let (Ok(template_name), Ok(region_name)) =
            (TemplateName::parse(template), Region::parse(region))
        else {
            return Err(ClientError::Unknown(format!(
                "{why}; the pin could not be read back"
            )));
        };
        let give_up = tokio::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(250);
        let mut last_seen;
        loop {
            match self.list_pins(target, &template_name, &region_name).await {
                Ok(pins) => {
                    let pin = pins
                        .into_iter()
                        .find(|pin| pin.template_name == template && pin.region == region);
                    match pin {
                        Some(pin) if pin.image_digest == digest => {
                            return Ok(Promoted {
                                status: StatusCode::CREATED,
                                pin,
                                settled: Some(format!(
                                    "{why}; the pin was read back at the digest"
                                )),
                                new_region: false,
                            });
                        }
                        Some(pin) => last_seen = format!("is `{}`", pin.image_digest),
                        None => last_seen = "does not exist".to_owned(),
                    }
                }
                Err(err) => last_seen = format!("could not be read ({err})"),
            }
            if tokio::time::Instant::now() + pause > give_up {
                return Err(ClientError::Unknown(format!(
                    "{why}; read back for {}s, the pin for `{template}`/`{region}` {last_seen}, not `{digest}`",
                    self.timeout.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Rolls back; succeeds only on 200/201 with a pin of that template and
    /// region (at `to_digest`, when one was asked for).
    pub async fn rollback(
        &self,
        target: &Target,
        request: &RollbackRequest,
    ) -> Result<Promoted, ClientError> {
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

    /// Holds a pin: `201` held now, `200` held already.
    pub async fn hold(&self, target: &Target, request: &HoldRequest) -> Result<Held, ClientError> {
        let url = endpoint(&target.base, "cp/admin/runtime-image/hold");
        let (status, body, id) = self
            .send(target, Kind::Write, || {
                self.http.post(url.clone()).json(request)
            })
            .await?;
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(refused(status, &body).with_request_id(id));
        }
        let region = request.region.as_deref().unwrap_or("global");
        held(status, &body, &request.template_name, region)
    }

    /// Releases a pin's hold: `200` with the hold released.
    pub async fn release(
        &self,
        target: &Target,
        template: &TemplateName,
        region: &Region,
    ) -> Result<Held, ClientError> {
        let mut url = endpoint(&target.base, "cp/admin/runtime-image/hold");
        url.query_pairs_mut()
            .append_pair("template_name", template.as_str())
            .append_pair("region", region.as_str());
        let (status, body, id) = self
            .send(target, Kind::Write, || self.http.delete(url.clone()))
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &body).with_request_id(id));
        }
        held(status, &body, template.as_str(), region.as_str())
    }

    /// POSTs and accepts only a 200/201 `{"pin"}` answer that `expected` holds for.
    async fn post_for_pin(
        &self,
        target: &Target,
        path: &str,
        request: &impl serde::Serialize,
        expected: impl Fn(&Pin) -> bool,
    ) -> Result<Promoted, ClientError> {
        let url = endpoint(&target.base, path);
        let (status, body, id) = self
            .send(target, Kind::Write, || {
                self.http.post(url.clone()).json(request)
            })
            .await?;
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(refused(status, &body).with_request_id(id));
        }
        let response: PinResponse = serde_json::from_slice(&body).map_err(|err| {
            ClientError::Protocol(format!(
                "server answered {} but the body is not a pin ({err}): {}",
                status.as_u16(),
                preview(&body)
            ))
        })?;
        let new_region = response.new_region;
        let pin = response.pin;
        if !expected(&pin) {
            return Err(ClientError::Protocol(format!(
                "server answered {} but the returned pin is `{}`/`{}` at `{}`, which is not what was asked",
                status.as_u16(),
                pin.template_name,
                pin.region,
                pin.image_digest
            )));
        }
        Ok(Promoted {
            status,
            pin,
            settled: None,
            new_region,
        })
    }

    /// GETs an API path and decodes the JSON answer; any status but 200 is an error.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
    ) -> Result<T, ClientError> {
        let url = endpoint(&target.base, path);
        self.get_decoded(target, url, &format!("the answer to `/{path}`"))
            .await
    }

    /// GETs a URL; any status but 200 is a refusal, a body that does not
    /// decode a protocol error naming `what` was expected.
    async fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        target: &Target,
        url: Url,
        what: &str,
    ) -> Result<T, ClientError> {
        let (status, body, id) = self
            .send(target, Kind::Read, || self.http.get(url.clone()))
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &body).with_request_id(id));
        }
        serde_json::from_slice(&body).map_err(|err| {
            ClientError::Protocol(format!(
                "server answered 200 but the body is not {what} ({err}): {}",
                preview(&body)
            ))
        })
    }

    /// One page of history, newest first.
    pub async fn history(
        &self,
        target: &Target,
        template: Option<&TemplateName>,
        region: Option<&Region>,
        limit: u32,
    ) -> Result<HistoryList, ClientError> {
        let mut url = endpoint(&target.base, "cp/admin/runtime-image/history");
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(template) = template {
                pairs.append_pair("template_name", template.as_str());
            }
            if let Some(region) = region {
                pairs.append_pair("region", region.as_str());
            }
            pairs.append_pair("limit", &limit.to_string());
        }
        self.get_decoded(target, url, "a history").await
    }

    /// The fleet entries of one pin (`GET /cp/fleet`).
    pub async fn fleet(
        &self,
        target: &Target,
        template: &TemplateName,
        region: &Region,
    ) -> Result<Vec<pinion_api::FleetEntry>, ClientError> {
        let mut url = endpoint(&target.base, "cp/fleet");
        url.query_pairs_mut()
            .append_pair("template_name", template.as_str())
            .append_pair("region", region.as_str());
        let list: pinion_api::FleetList = self.get_decoded(target, url, "a fleet list").await?;
        Ok(list.fleet)
    }

    /// What a registry clean-up must keep.
    pub async fn retention(
        &self,
        target: &Target,
        history: u32,
    ) -> Result<pinion_api::Retention, ClientError> {
        let mut url = endpoint(&target.base, "cp/admin/runtime-image/retention");
        url.query_pairs_mut()
            .append_pair("history", &history.to_string());
        self.get_decoded(target, url, "a retention list").await
    }

    /// Lists the pins of one template and region (the server filters; the
    /// caller still checks each row).
    pub async fn list_pins(
        &self,
        target: &Target,
        template: &TemplateName,
        region: &Region,
    ) -> Result<Vec<Pin>, ClientError> {
        let mut url = endpoint(&target.base, "cp/admin/runtime-image");
        url.query_pairs_mut()
            .append_pair("template_name", template.as_str())
            .append_pair("region", region.as_str());
        let list: PinList = self.get_decoded(target, url, "a pin list").await?;
        Ok(list.pins)
    }

    /// Sends with the token and this client's deadline, retrying with
    /// backoff what may be retried (see [`Kind`]). Timeouts are not
    /// retried: a server that did not answer in time has had its chance, and
    /// the step must end in bounded time.
    async fn send(
        &self,
        target: &Target,
        kind: Kind,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>, Option<String>), ClientError> {
        let mut backoff = Duration::from_millis(500);
        let deadline_ms = server_deadline(self.timeout).as_millis().max(1).to_string();
        for attempt in 1..=ATTEMPTS {
            let sent = build()
                .bearer_auth(&target.token)
                .header("x-pinion-timeout", deadline_ms.as_str())
                .send()
                .await;
            let failure = match sent {
                Ok(response) => {
                    let status = response.status();
                    let id = request_id_of(response.headers());
                    let body = response.bytes().await;
                    match body {
                        Ok(body) if !is_transient(status) => {
                            return Ok((status, body.to_vec(), id));
                        }
                        Ok(body) => {
                            let failure = refused(status, &body).with_request_id(id);
                            if kind == Kind::Write && !nothing_changed(&failure) {
                                return Err(ClientError::Unknown(format!(
                                    "the write may or may not have been made ({failure})"
                                )));
                            }
                            failure
                        }
                        Err(err) if kind == Kind::Write => {
                            return Err(ClientError::Unknown(format!(
                                "the answer to the write did not arrive whole ({})",
                                describe(&err)
                            )));
                        }
                        Err(err) if err.is_timeout() => {
                            return Err(ClientError::Transport(format!(
                                "no complete answer within {}s",
                                self.timeout.as_secs()
                            )));
                        }
                        Err(err) => ClientError::Transport(format!(
                            "could not read the answer: {}",
                            describe(&err)
                        )),
                    }
                }
                Err(err) if kind == Kind::Write && !err.is_connect() => {
                    return Err(ClientError::Unknown(format!(
                        "no answer to the write ({})",
                        if err.is_timeout() {
                            format!("none within {}s", self.timeout.as_secs())
                        } else {
                            describe(&err)
                        }
                    )));
                }
                Err(err) if err.is_timeout() => {
                    return Err(ClientError::Transport(format!(
                        "no answer within {}s",
                        self.timeout.as_secs()
                    )));
                }
                // A certificate the client does not trust will not become
                // trusted by asking again.
                Err(err) if err.is_connect() && describe(&err).contains("certificate") => {
                    return Err(ClientError::Transport(format!(
                        "the server's TLS certificate was refused ({}); for a private CA, pass it with --ca-cert",
                        describe(&err)
                    )));
                }
                Err(err) => ClientError::Transport(describe(&err)),
            };
            if attempt == ATTEMPTS {
                return Err(gave_up(failure));
            }
            eprintln!(
                "warning: {}: attempt {attempt}/{ATTEMPTS} failed: {failure}; retrying in {:.1}s",
                target.name,
                backoff.as_secs_f64()
            );
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(ClientError::Transport("no attempt was made".to_owned()))
    }
}

/// Whether a failed answer to a write says that nothing was changed: an
/// answer of the server's own (the contract's error body, with a code), and
/// not the one code that says the outcome is unknown. A proxy's bare 502 or
/// 504 says nothing of what the server did.
fn nothing_changed(failure: &ClientError) -> bool {
    matches!(failure, ClientError::Refused { code: Some(code), .. } if code != "commit_outcome_unknown")
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

/// The last of several failed attempts, saying so.
fn gave_up(failure: ClientError) -> ClientError {
    let note = |text: String| format!("{text} (gave up after {ATTEMPTS} attempts)");
    match failure {
        ClientError::Refused {
            status,
            code,
            message,
            request_id,
        } => ClientError::Refused {
            status,
            code,
            message: note(message),
            request_id,
        },
        ClientError::Transport(reason) => ClientError::Transport(note(reason)),
        ClientError::Protocol(reason) => ClientError::Protocol(note(reason)),
        ClientError::Unknown(reason) => ClientError::Unknown(note(reason)),
    }
}

/// A non-success answer, with the contract's error body when it has one.
fn refused(status: StatusCode, body: &[u8]) -> ClientError {
    let number = status.as_u16();
    if status.is_redirection() {
        return ClientError::Refused {
            status: number,
            code: None,
            message: format!(
                "server answered {number} (a redirect); redirects are not followed so the token never reaches another host"
            ),
            request_id: None,
        };
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => ClientError::Refused {
            status: number,
            code: Some(one_line(&error.error.code)),
            message: one_line(&error.error.message),
            request_id: None,
        },
        Err(_) if body.is_empty() => ClientError::Refused {
            status: number,
            code: None,
            message: format!("server answered {number} with an empty body"),
            request_id: None,
        },
        Err(_) => ClientError::Refused {
            status: number,
            code: None,
            message: format!("server answered {number}: {}", preview(body)),
            request_id: None,
        },
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
