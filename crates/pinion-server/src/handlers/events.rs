//! `GET /cp/events`: the change feed, as JSON pages or, with `Accept:
//! text/event-stream`, as a Server-Sent Events stream on the same path.

use std::collections::VecDeque;
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
use tokio::sync::broadcast;

use super::{Query, parse_field};
use crate::auth::Caller;
use crate::deadline::Deadline;
use crate::error::{ApiError, Code, Field};
use crate::feed::{BROADCAST_CAPACITY, Batch, Frame, PAGE};
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// A comment at least this often keeps the connection (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How often a stream asks whether its token still works.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

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

    /// Whether this reader takes every event (no filter, no restriction).
    fn takes_all(&self) -> bool {
        self.template.is_none() && self.types.is_empty() && self.templates.is_none()
    }

    /// What of a broadcast batch this reader has not had and asked for, as
    /// one message (empty when nothing).
    fn message(&self, batch: &Batch, sent: i64) -> Bytes {
        if self.takes_all() && batch.first_id() > sent {
            return batch.joined.clone();
        }
        let mut message = Vec::new();
        for frame in batch
            .frames
            .iter()
            .filter(|frame| frame.id > sent && self.takes(frame))
        {
            message.extend_from_slice(&frame.sse);
        }
        Bytes::from(message)
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
        match query.one("after")? {
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
        let max = state.settings().max_streams_per_token;
        let slot = state
            .feed()
            .stream_slot(caller.name(), max)
            .ok_or_else(|| {
                ApiError::new(
                    Code::TooManyStreams,
                    format!(
                        "token `{}` has {max} event streams open already; close one first",
                        caller.name()
                    ),
                )
            })?;
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
        return Ok(stream(state, caller, wanted, first, live, slot));
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

/// The stream: the events after the reader's id, read from the log at the
/// reader's pace, then the live broadcast, each once and in order, with a
/// comment every [`KEEP_ALIVE`].
///
/// The stream's body drives the feeding itself, in the connection's own
/// task: an event costs each stream one wake-up and one write, and a
/// reader that does not read stops its stream where it stands, holding
/// nothing but its place. Nothing waits for it: if it falls more than the
/// broadcast holds behind, it is disconnected, with a last comment saying
/// why and where to resume. It also ends, saying why, when its token is
/// revoked or the server stops.
fn stream(
    state: AppState,
    caller: Caller,
    wanted: Wanted,
    first: EventPage,
    live: broadcast::Receiver<Arc<Batch>>,
    slot: crate::feed::StreamSlot,
) -> Response {
    let queue = Arc::new(Queue::default());
    let feeding = queue.clone();
    let feeder = Box::pin(async move {
        // The token's place is held for as long as the stream is fed.
        let _slot = slot;
        follow(&state, &caller, &wanted, first, live, &feeding).await
    });
    let body = Body::new(Stream {
        queue,
        feeder: Some(feeder),
        ending: None,
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

/// Feeds one stream until it ends; returns its last words.
async fn follow(
    state: &AppState,
    caller: &Caller,
    wanted: &Wanted,
    first: EventPage,
    mut live: broadcast::Receiver<Arc<Batch>>,
    out: &Queue,
) -> String {
    let feed = state.feed();
    let _counted = feed.subscriber();
    let mut closing = feed.closing();
    let stopping = |sent: i64| {
        format!(": disconnected: the server is stopping; reconnect with Last-Event-ID: {sent}\n\n")
    };
    // The id of the last event sent (or passed over as not wanted).
    let mut sent = wanted.after;
    out.push(Bytes::from_static(b"retry: 3000\n\n"));
    let mut page = first;
    // From the log, a page at a time, each once the reader has taken the
    // one before.
    loop {
        // The page is filtered already: all of it goes, in one message.
        if let Some(last) = page.events.last() {
            out.push(Batch::new(&page.events).joined);
            sent = last.id;
            out.taken().await;
        }
        if page.events.len() < PAGE {
            // Everything up to the log's head has been read: the rest comes
            // through the broadcast, subscribed before that read.
            sent = sent.max(page.head);
            break;
        }
        let deadline = Deadline::after(state.settings().request_timeout);
        page = match read(state, wanted, sent, PAGE, deadline).await {
            Ok(next) => next,
            Err(err) => {
                return format!(
                    ": disconnected: {}; reconnect with Last-Event-ID: {sent}\n\n",
                    err.message
                );
            }
        };
    }
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    // A revoked token ends its streams within this long (a look at the
    // view: no query).
    let mut revocation = tokio::time::interval(REVOCATION_CHECK);
    revocation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    revocation.tick().await;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(batch) if batch.last_id() <= sent => {}
                Ok(batch) => {
                    let message = wanted.message(&batch, sent);
                    if !message.is_empty() {
                        out.push(message);
                    }
                    sent = batch.last_id();
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return format!(
                        ": disconnected: this reader fell more than {BROADCAST_CAPACITY} batches \
                         of events behind; reconnect with Last-Event-ID: {sent}\n\n"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return stopping(sent),
            },
            _ = revocation.tick() => {
                if !caller.is_active(&state.view()) {
                    return ": disconnected: the token was revoked or has expired\n\n".to_owned();
                }
            }
            _ = keep_alive.tick() => {
                if out.is_empty() {
                    out.push(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
            _ = closing.changed() => return stopping(sent),
        }
    }
}

/// What the feeding has produced and the body has not taken yet.
#[derive(Default)]
struct Queue {
    messages: Mutex<VecDeque<Bytes>>,
}

impl Queue {
    fn push(&self, message: Bytes) {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(message);
    }

    fn is_empty(&self) -> bool {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Everything queued, as one message.
    fn take(&self) -> Option<Bytes> {
        let mut messages = self.messages.lock().unwrap_or_else(PoisonError::into_inner);
        match messages.len() {
            0 => None,
            1 => messages.pop_front(),
            _ => {
                let mut joined = Vec::with_capacity(messages.iter().map(Bytes::len).sum());
                for message in messages.drain(..) {
                    joined.extend_from_slice(&message);
                }
                Some(Bytes::from(joined))
            }
        }
    }

    /// Ready once the body has taken everything queued. The body polls the
    /// feeding right after it takes, so waiting needs no waker of its own.
    fn taken(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |_| {
            if self.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

type Feeder = Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// The stream's body: what the feeding queued, then its last words.
struct Stream {
    queue: Arc<Queue>,
    feeder: Option<Feeder>,
    ending: Option<String>,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        loop {
            if let Some(message) = self.queue.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
            }
            let Some(feeder) = self.feeder.as_mut() else {
                let last = self.ending.take().map(Bytes::from);
                return Poll::Ready(last.map(|words| Ok(http_body::Frame::data(words))));
            };
            match feeder.as_mut().poll(cx) {
                Poll::Ready(words) => {
                    self.feeder = None;
                    self.ending = Some(words);
                }
                // It may have queued something before it waited.
                Poll::Pending if !self.queue.is_empty() => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
