//! The change feed as this server serves it.
//!
//! The event table is the truth. One task per server (the follower) reads
//! new events from it when something may have been appended: a write of
//! this server's (the writer wakes it), another replica's (the change
//! feed's notification wakes it), or, as a fallback, once a second. Each
//! event is rendered once, as the JSON every consumer gets and as an SSE
//! message, and broadcast to every subscriber in id order. A subscriber
//! resuming from an older id reads the log itself first, having subscribed
//! before it read, so it sees every event once and in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use pinion_core::{EventType, TemplateName, TokenName};
use pinion_store::{EventQuery, EventRecord};
use tokio::sync::{Notify, broadcast, watch};

use crate::state::AppState;

/// How many batches the broadcast holds for streams that are behind (at
/// least [`FAN_OUT_INTERVAL`] apart under load, so seconds of events); a
/// stream that falls further behind is disconnected and resumes from its
/// last id.
pub const BROADCAST_CAPACITY: usize = 256;

/// How many events one read of the log takes.
pub const PAGE: usize = 500;

/// The follower reads the log at most this often while events keep coming:
/// a burst then reaches each stream as one batch (one wake-up, one write per
/// stream) instead of one per commit. An event waits at most this long for
/// its batch; after a quiet spell, the next is read at once.
pub const FAN_OUT_INTERVAL: Duration = Duration::from_millis(10);

/// One event, rendered once for every consumer.
#[derive(Debug)]
pub struct Frame {
    pub id: i64,
    pub kind: EventType,
    pub template: Option<TemplateName>,
    /// The event as one Server-Sent Events message: its `data` line is the
    /// event's JSON, exactly as `GET /cp/events` and webhooks carry it.
    pub sse: Bytes,
}

impl Frame {
    pub fn new(event: &EventRecord) -> Frame {
        let json = event_json(event);
        let sse = format!("id: {}\nevent: {}\ndata: {json}\n\n", event.id, event.kind);
        Frame {
            id: event.id,
            kind: event.kind,
            template: event.template.clone(),
            sse: Bytes::from(sse),
        }
    }
}

/// The events one read of the log found, each rendered once, and all of
/// them joined: a stream that wants them all writes them in one go, so a
/// burst of events costs each stream one wake-up and one write.
#[derive(Debug)]
pub struct Batch {
    pub frames: Vec<Frame>,
    pub joined: Bytes,
}

impl Batch {
    pub fn new(events: &[EventRecord]) -> Batch {
        let frames: Vec<Frame> = events.iter().map(Frame::new).collect();
        let mut joined = Vec::with_capacity(frames.iter().map(|frame| frame.sse.len()).sum());
        for frame in &frames {
            joined.extend_from_slice(&frame.sse);
        }
        Batch {
            frames,
            joined: Bytes::from(joined),
        }
    }

    pub fn first_id(&self) -> i64 {
        self.frames.first().map_or(0, |frame| frame.id)
    }

    pub fn last_id(&self) -> i64 {
        self.frames.last().map_or(0, |frame| frame.id)
    }
}

/// The event as the contract's JSON object. `data` is the stored JSON text,
/// embedded as it is (checked, so a hand-edited row cannot break the
/// document around it).
pub fn event_json(event: &EventRecord) -> String {
    let text = |value: Option<&str>| match value {
        Some(value) => serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()),
        None => "null".to_owned(),
    };
    let data = match serde_json::from_str::<&serde_json::value::RawValue>(&event.data) {
        Ok(raw) => raw.get(),
        Err(err) => {
            tracing::error!(event = event.id, error = %err, "an event's data is not JSON");
            "null"
        }
    };
    format!(
        r#"{{"id":{},"type":"{}","at":{},"template_name":{},"region":{},"data":{data}}}"#,
        event.id,
        event.kind.as_str(),
        text(Some(&event.at)),
        text(event.template.as_ref().map(TemplateName::as_str)),
        text(event.region.as_ref().map(|region| region.as_str())),
    )
}

pub struct Feed {
    batches: broadcast::Sender<std::sync::Arc<Batch>>,
    /// The newest event id the follower has read.
    head: watch::Sender<i64>,
    wake: Notify,
    /// Set when the server stops: every stream ends.
    closing: watch::Sender<bool>,
    subscribers: AtomicUsize,
    /// Open streams by token, for `--max-streams-per-token`.
    streams: Arc<Mutex<HashMap<TokenName, usize>>>,
}

impl Feed {
    /// A feed whose follower starts after `head` (older events are read
    /// from the log by whoever asks for them).
    pub fn new(head: i64) -> Feed {
        Feed {
            batches: broadcast::Sender::new(BROADCAST_CAPACITY),
            head: watch::Sender::new(head),
            wake: Notify::new(),
            closing: watch::Sender::new(false),
            subscribers: AtomicUsize::new(0),
            streams: Arc::default(),
        }
    }

    /// Something may have been appended: the follower looks.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Batch>> {
        self.batches.subscribe()
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Counts a stream for as long as the guard lives.
    pub fn subscriber(&self) -> Subscriber<'_> {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscriber(self)
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// A place for one more stream of `token`, held as long as the guard
    /// lives; `None` when the token has `max` open already.
    pub fn stream_slot(&self, token: &TokenName, max: usize) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(token.clone()).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            streams: self.streams.clone(),
            token: token.clone(),
        })
    }
}

/// One of a token's open streams.
pub struct StreamSlot {
    streams: Arc<Mutex<HashMap<TokenName, usize>>>,
    token: TokenName,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.token) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.token);
            }
        }
    }
}

/// One open stream, counted in `pinion_event_subscribers`.
pub struct Subscriber<'a>(&'a Feed);

impl Drop for Subscriber<'_> {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The follower: reads what was appended after the last event it read, and
/// broadcasts it, whenever woken and at least once a second.
pub async fn follow(state: AppState) {
    let feed = state.feed();
    let mut cursor = feed.head();
    let mut closing = feed.closing();
    let mut last_read = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = feed.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = closing.changed() => return,
        }
        tokio::time::sleep_until(last_read + FAN_OUT_INTERVAL).await;
        last_read = tokio::time::Instant::now();
        loop {
            let query = EventQuery {
                after: cursor,
                limit: PAGE,
                ..EventQuery::default()
            };
            let page = match state.read_feed(query).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "could not read the event log");
                    break;
                }
            };
            let full = page.events.len() == PAGE;
            if let Some(last) = page.events.last() {
                cursor = last.id;
                // No subscriber is not an error.
                let _ = feed
                    .batches
                    .send(std::sync::Arc::new(Batch::new(&page.events)));
            }
            feed.head.send_replace(cursor.max(page.head));
            if !full {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pinion_core::Region;

    use super::*;

    #[test]
    fn events_render_as_the_contract_says_and_bad_data_cannot_break_out() {
        let mut event = EventRecord {
            id: 7,
            kind: EventType::PinPromoted,
            at: "2026-12-02T09:00:00.000000Z".into(),
            template: Some(TemplateName::parse("codex").unwrap()),
            region: Some(Region::global()),
            data: r#"{"to_digest":"sha256:00"}"#.into(),
        };
        let frame = Frame::new(&event);
        let rendered = event_json(&event);
        let json: serde_json::Value = serde_json::from_str(&rendered).unwrap();
        assert_eq!(json["id"], 7);
        assert_eq!(json["type"], "pin.promoted");
        assert_eq!(json["template_name"], "codex");
        assert_eq!(json["region"], "global");
        assert_eq!(json["data"]["to_digest"], "sha256:00");
        assert_eq!(
            std::str::from_utf8(&frame.sse).unwrap(),
            format!("id: 7\nevent: pin.promoted\ndata: {rendered}\n\n")
        );
        event.data = r#"{"x":1}, "injected": true"#.into();
        event.template = None;
        let json: serde_json::Value = serde_json::from_str(&event_json(&event)).unwrap();
        assert_eq!(json["data"], serde_json::Value::Null);
        assert_eq!(json["template_name"], serde_json::Value::Null);
    }
}
