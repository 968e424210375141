//! `GET /cp/events`: the change feed, as JSON pages or, with `Accept:
//! text/event-stream`, as a Server-Sent Events stream on the same path.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use pinion_core::{EventType, Scope, TemplateName};
use pinion_store::{EventPage, EventQuery};
use tokio::sync::{broadcast, mpsc};

use super::{Query, parse_field};
use crate::auth::Caller;
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::feed::{Frame, PAGE};
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// Messages a stream holds for a subscriber that reads slowly; past that it
/// is disconnected, saying so, and resumes from its last id.
pub const SUBSCRIBER_BUFFER: usize = 256;
/// A comment at least this often keeps the connection (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// What a reader asked for, parsed.
struct Wanted {
    after: i64,
    template: Option<TemplateName>,
    types: Vec<EventType>,
    /// A template-restricted token's templates.
    templates: Option<Vec<TemplateName>>,
}

impl Wanted {
    fn query(&self, after: i64, limit: usize) -> EventQuery {
        EventQuery {
            after,
            limit,
            template: self.template.clone(),
            types: self.types.clone(),
            templates: self.templates.clone(),
        }
    }

    /// Whether a broadcast event is one this reader asked for and may see.
    fn takes(&self, frame: &Frame) -> bool {
        let template_ok = match (&self.template, &frame.template) {
            (Some(wanted), Some(template)) => wanted == template,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let allowed = match (&self.templates, &frame.template) {
            (Some(allowed), Some(template)) => allowed.contains(template),
            (Some(_), None) => false,
            (None, _) => true,
        };
        template_ok && allowed && (self.types.is_empty() || self.types.contains(&frame.kind))
    }
}

fn invalid_after(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidAfter, message)
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let query = Query::parse(raw.as_deref());
    let streaming = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/event-stream"));
    let after =
        match query.non_empty("after") {
            None => None,
            Some(text) => Some(text.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(
                || invalid_after("`after` must be an event id: a whole number, 0 or more"),
            )?),
        };
    // `Last-Event-ID` wins over `after` on a stream.
    let after = match (streaming, headers.get(&LAST_EVENT_ID)) {
        (true, Some(value)) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    invalid_after("`Last-Event-ID` must be an event id: a whole number, 0 or more")
                })?,
        ),
        _ => after,
    };
    let limit = query.number("limit", MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize;
    let template = query.template()?;
    if let Some(template) = &template {
        caller.require_template(template)?;
    }
    let types = query
        .all("type")
        .into_iter()
        .filter(|value| !value.is_empty())
        .map(|value| parse_field(Field::EventType, EventType::parse(&value)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut wanted = Wanted {
        after: after.unwrap_or(0),
        template,
        types,
        templates: caller.templates().map(<[TemplateName]>::to_vec),
    };
    let deadline = Deadline::for_request(&headers, state.settings().request_timeout)?;
    if streaming {
        // Subscribed before the first read of the log: whatever is appended
        // after that read is in the broadcast; nothing falls in between.
        let live = state.feed().subscribe();
        let first = match after {
            Some(after) => read(&state, &wanted, after, PAGE, deadline).await?,
            // A stream opened with no id starts now.
            None => {
                let now = state
                    .query(deadline, |store| {
                        store.events(&EventQuery {
                            limit: 0,
                            ..EventQuery::default()
                        })
                    })
                    .await?;
                wanted.after = now.head;
                now
            }
        };
        return Ok(stream(state, caller, wanted, first, live));
    }
    let page = read(&state, &wanted, wanted.after, limit, deadline).await?;
    let next_after = page.events.last().map_or(wanted.after, |event| event.id);
    let mut body = String::from(r#"{"events":["#);
    for (n, event) in page.events.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&crate::feed::event_json(event));
    }
    body.push_str(&format!(
        r#"],"next_after":{next_after},"head":{}}}"#,
        page.head
    ));
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// A page of the log after `after`; `410 events_expired` if events after
/// `after` have been pruned, and an `after` beyond the newest event is
/// refused.
async fn read(
    state: &AppState,
    wanted: &Wanted,
    after: i64,
    limit: usize,
    deadline: Deadline,
) -> Result<EventPage, ApiError> {
    let query = wanted.query(after, limit);
    let page = state
        .query(deadline, move |store| store.events(&query))
        .await?;
    if after < page.pruned_through {
        return Err(ApiError::new(
            Code::EventsExpired,
            format!(
                "events up to {} are no longer kept, so reading after {after} would skip some; \
                 read the current state and follow from `after={}`",
                page.pruned_through, page.head
            ),
        ));
    }
    if after > page.head {
        return Err(invalid_after(format!(
            "no event {after} yet: the newest is {}",
            page.head
        )));
    }
    Ok(page)
}

/// The stream: the events after the reader's id read from the log at the
/// reader's pace, then the live broadcast, each once and in order, with a
/// comment every [`KEEP_ALIVE`]. Live, a reader that lets
/// [`SUBSCRIBER_BUFFER`] messages pile up is disconnected, with a last
/// comment saying why and where to resume: it never holds anything up. If
/// the broadcast outruns this stream's task, it goes back to the log.
/// It ends, saying why, when the token is revoked or the server stops.
fn stream(
    state: AppState,
    caller: Caller,
    wanted: Wanted,
    first: EventPage,
    live: broadcast::Receiver<Arc<Frame>>,
) -> Response {
    let (out, messages) = mpsc::channel::<Bytes>(SUBSCRIBER_BUFFER);
    let ending = Arc::new(Mutex::new(None));
    let last_words = ending.clone();
    tokio::spawn(async move {
        let why = follow(&state, &caller, &wanted, first, live, &out).await;
        if let Some(why) = why {
            *last_words.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        }
    });
    let body = Body::new(Stream {
        messages,
        ending: Some(ending),
    });
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Feeds one stream until it ends; returns its last words (`None` when the
/// reader went away).
async fn follow(
    state: &AppState,
    caller: &Caller,
    wanted: &Wanted,
    first: EventPage,
    mut live: broadcast::Receiver<Arc<Frame>>,
    out: &mpsc::Sender<Bytes>,
) -> Option<String> {
    let feed = state.feed();
    let _counted = feed.subscriber();
    let mut closing = feed.closing();
    let stopping = |sent: i64| {
        Some(format!(
            ": disconnected: the server is stopping; reconnect with Last-Event-ID: {sent}\n\n"
        ))
    };
    // The id of the last event sent (or passed over as not wanted).
    let mut sent = wanted.after;
    out.send(Bytes::from_static(b"retry: 3000\n\n"))
        .await
        .ok()?;
    let mut page = Some(first);
    loop {
        // From the log, at the reader's pace.
        loop {
            let current = match page.take() {
                Some(current) => current,
                None => {
                    let deadline = Deadline::after(state.settings().request_timeout);
                    match read(state, wanted, sent, PAGE, deadline).await {
                        Ok(next) => next,
                        Err(err) => {
                            return Some(format!(
                                ": disconnected: {}; reconnect with Last-Event-ID: {sent}\n\n",
                                err.message
                            ));
                        }
                    }
                }
            };
            for event in &current.events {
                tokio::select! {
                    sending = out.send(Frame::new(event).sse) => sending.ok()?,
                    _ = closing.changed() => return stopping(sent),
                }
                sent = event.id;
            }
            if current.events.len() < PAGE {
                // Everything up to the log's head has been read: the rest
                // comes through the broadcast, subscribed before that read.
                sent = sent.max(current.head);
                break;
            }
        }
        // Live.
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(frame) if frame.id <= sent => {}
                    Ok(frame) => {
                        if wanted.takes(&frame) && out.try_send(frame.sse.clone()).is_err() {
                            return Some(format!(
                                ": disconnected: this reader let more than {SUBSCRIBER_BUFFER} \
                                 messages pile up; reconnect with Last-Event-ID: {sent}\n\n"
                            ));
                        }
                        sent = frame.id;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Back to the log, subscribed anew before reading it.
                        live = feed.subscribe();
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => return stopping(sent),
                },
                _ = keep_alive.tick() => {
                    if !caller.is_active(&state.view()) {
                        return Some(": disconnected: the token was revoked\n\n".to_owned());
                    }
                    // A comment that does not fit means a reader that is not
                    // reading; the next event will say so.
                    let _ = out.try_send(Bytes::from_static(b": keep-alive\n\n"));
                }
                _ = closing.changed() => return stopping(sent),
                () = out.closed() => return None,
            }
        }
    }
}

/// The stream's body: the messages as they come, then the last words.
struct Stream {
    messages: mpsc::Receiver<Bytes>,
    ending: Option<Arc<Mutex<Option<String>>>>,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.messages.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                // Whatever else is ready goes in the same write.
                let mut more = Vec::new();
                while more.len() < 64 {
                    match self.messages.try_recv() {
                        Ok(next) => more.push(next),
                        Err(_) => break,
                    }
                }
                if more.is_empty() {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
                }
                let mut joined =
                    Vec::with_capacity(message.len() + more.iter().map(Bytes::len).sum::<usize>());
                joined.extend_from_slice(&message);
                for next in &more {
                    joined.extend_from_slice(next);
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(joined)))))
            }
            Poll::Ready(None) => {
                let last = self.ending.take().and_then(|ending| {
                    ending.lock().unwrap_or_else(PoisonError::into_inner).take()
                });
                Poll::Ready(last.map(|words| Ok(http_body::Frame::data(Bytes::from(words)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
