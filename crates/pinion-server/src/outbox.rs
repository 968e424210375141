//! Webhook deliveries, per the Standard Webhooks specification, from the
//! durable outbox.
//!
//! An event's deliveries are rows written in the event's own transaction.
//! This worker claims the due ones (a lease: another replica skips them, and
//! takes them over only if this one died mid-attempt), posts each event to
//! its webhook, and records the attempt and what follows it: delivered, a
//! retry on the schedule (or later, if the receiver's `Retry-After` asks),
//! failed once the schedule is spent, or the webhook disabled by a `410`. A
//! server killed at any point leaves the rows behind, so every committed
//! event is delivered at least once; receivers deduplicate by `webhook-id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pinion_core::{AttemptOutcome, WebhookName, next_step};
use pinion_store::{AttemptRecord, DueDelivery};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::feed::event_json;
use crate::seal::sign;
use crate::state::AppState;

/// Only a 2xx within this counts as delivered (the contract's figure).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts in flight at once, across every webhook.
const IN_FLIGHT: usize = 64;
/// Attempts in flight at once to one webhook: a receiver gets at most this
/// many connections from one server, and a slow one holds no more of the
/// worker than this.
const PER_WEBHOOK: usize = 4;
/// While deliveries keep coming, claims are made at most this often, so each
/// takes up many.
const CLAIM_INTERVAL: Duration = Duration::from_millis(5);
/// A claimed delivery that could not start within this (its webhook's
/// slots were busy) is left for its claim to lapse and be claimed again:
/// an attempt must end inside its claim's lease.
const START_WITHIN: Duration = Duration::from_secs(10);
/// After this many attempts in a row that got no answer (timeouts,
/// refused connections), a webhook rests: its deliveries are not claimed
/// for [`REST_FIRST`], doubling with each further failure up to
/// [`REST_MOST`]. Its first answer ends the rest.
const FAILURES_BEFORE_REST: u32 = 3;
const REST_FIRST: Duration = Duration::from_secs(30);
const REST_MOST: Duration = Duration::from_secs(600);
/// The longest `last_error` kept.
const ERROR_LINE_LIMIT: usize = 200;

/// What this worker knows of one webhook's receiver.
struct Receiver {
    slots: Arc<Semaphore>,
    in_flight: usize,
    /// Attempts in a row that got no answer.
    silent: u32,
    rest_until: Option<Instant>,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            slots: Arc::new(Semaphore::new(PER_WEBHOOK)),
            in_flight: 0,
            silent: 0,
            rest_until: None,
        }
    }

    /// Not to be claimed for now: as many in flight as it may have, or
    /// resting.
    fn busy(&self, now: Instant) -> bool {
        self.in_flight >= PER_WEBHOOK || self.rest_until.is_some_and(|until| until > now)
    }

    fn answered(&mut self, answered: bool, now: Instant) {
        if answered {
            self.silent = 0;
            self.rest_until = None;
            return;
        }
        self.silent = self.silent.saturating_add(1);
        if self.silent >= FAILURES_BEFORE_REST {
            let doublings = (self.silent - FAILURES_BEFORE_REST).min(8);
            let rest = REST_FIRST.saturating_mul(1u32 << doublings).min(REST_MOST);
            self.rest_until = Some(now + rest);
        }
    }
}

/// How an attempt ended, for the worker's bookkeeping.
struct Finished {
    webhook: WebhookName,
    /// None: not attempted (it could not start in time); its claim lapses.
    record: Option<AttemptRecord>,
    /// The receiver answered (any status).
    answered: bool,
}

/// The worker: whenever woken (a write appended events, a redelivery was
/// asked for, an attempt ended) and at least once a second, records what
/// ended and claims what is due, for the webhooks with room. Attempts run
/// on their own: one receiver's slowness never holds another's deliveries.
pub async fn deliver(state: AppState) {
    if state.settings().secret_key.is_none() {
        tracing::warn!(
            "this server has no secret key (--secret-key-file), so it cannot sign webhook deliveries: it claims none; replicas with the key deliver them"
        );
        return;
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        // A proxy from the environment would connect for us, to wherever.
        .no_proxy()
        .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")));
    let allow_private = state.settings().webhook_allow_private;
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(crate::targets::PublicOnly));
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "could not set up the webhook client: no deliveries");
            return;
        }
    };
    let mut closing = state.feed().closing();
    let mut last_claim = Instant::now();
    let mut receivers: HashMap<WebhookName, Receiver> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut in_flight = 0usize;
    let mut results: Vec<AttemptRecord> = Vec::new();
    loop {
        tokio::select! {
            () = state.outbox_wake().notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            Some(finished) = done_rx.recv() => {
                in_flight = in_flight.saturating_sub(1);
                note(&mut receivers, &mut results, finished);
            }
            _ = closing.changed() => return,
        }
        loop {
            while let Ok(finished) = done_rx.try_recv() {
                in_flight = in_flight.saturating_sub(1);
                note(&mut receivers, &mut results, finished);
            }
            let now = Instant::now();
            receivers.retain(|_, receiver| {
                receiver.in_flight > 0 || receiver.rest_until.is_some_and(|until| until > now)
            });
            let room = IN_FLIGHT.saturating_sub(in_flight);
            if results.is_empty() {
                if room == 0 {
                    break;
                }
                match state.any_delivery_due().await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(err) => {
                        tracing::warn!(
                            code = err.code.as_str(),
                            "could not look for due deliveries"
                        );
                        break;
                    }
                }
            }
            tokio::time::sleep_until(last_claim + CLAIM_INTERVAL).await;
            last_claim = Instant::now();
            let skip: Vec<WebhookName> = receivers
                .iter()
                .filter(|(_, receiver)| receiver.busy(last_claim))
                .map(|(name, _)| name.clone())
                .collect();
            let claimed = match state
                .record_and_claim(std::mem::take(&mut results), room, skip)
                .await
            {
                Ok(claimed) => claimed,
                Err(err) => {
                    // The claims lapse and the deliveries are made again:
                    // at least once.
                    tracing::warn!(
                        code = err.code.as_str(),
                        "could not record or claim deliveries"
                    );
                    break;
                }
            };
            if claimed.is_empty() {
                break;
            }
            for due in claimed {
                let receiver = receivers
                    .entry(due.webhook.clone())
                    .or_insert_with(Receiver::new);
                receiver.in_flight += 1;
                in_flight += 1;
                let slots = receiver.slots.clone();
                let (client, state, done) = (client.clone(), state.clone(), done_tx.clone());
                let claimed_at = last_claim;
                tokio::spawn(async move {
                    let webhook = due.webhook.clone();
                    let started =
                        tokio::time::timeout_at(claimed_at + START_WITHIN, slots.acquire_owned())
                            .await;
                    let finished = match started {
                        Ok(Ok(_slot)) => {
                            let (record, answered) = attempt(&client, &state, due).await;
                            Finished {
                                webhook,
                                record: Some(record),
                                answered,
                            }
                        }
                        _ => Finished {
                            webhook,
                            record: None,
                            answered: true,
                        },
                    };
                    let _ = done.send(finished);
                });
            }
        }
    }
}

/// Books an ended attempt: its record to write, its receiver's state.
fn note(
    receivers: &mut HashMap<WebhookName, Receiver>,
    results: &mut Vec<AttemptRecord>,
    finished: Finished,
) {
    if let Some(receiver) = receivers.get_mut(&finished.webhook) {
        receiver.in_flight = receiver.in_flight.saturating_sub(1);
        if finished.record.is_some() {
            let was_resting = receiver.rest_until.is_some();
            receiver.answered(finished.answered, Instant::now());
            if !was_resting && receiver.rest_until.is_some() {
                tracing::warn!(
                    webhook = %finished.webhook,
                    failures = receiver.silent,
                    "webhook receiver keeps not answering: resting it"
                );
            }
        }
    }
    if let Some(record) = finished.record {
        results.push(record);
    }
}

/// One attempt of one delivery, and what follows it.
async fn attempt(
    client: &reqwest::Client,
    state: &AppState,
    due: DueDelivery,
) -> (AttemptRecord, bool) {
    let (status, error, outcome) = post(client, state, &due).await;
    let answered = status.is_some();
    let next = next_step(
        u32::try_from(due.attempts + 1).unwrap_or(u32::MAX),
        &state.settings().webhook_retry_schedule,
        outcome,
    );
    match &error {
        None => tracing::debug!(webhook = %due.webhook, event = due.event.id, "delivered"),
        Some(error) => tracing::info!(
            webhook = %due.webhook, event = due.event.id, status, %error, next = ?next,
            "delivery attempt failed"
        ),
    }
    let record = AttemptRecord {
        webhook: due.webhook,
        event_id: due.event.id,
        at_ms: crate::clock::unix_ms(crate::clock::now()),
        status,
        error,
        next,
    };
    (record, answered)
}

/// Posts the event: its status, a one-line error unless delivered, and the
/// outcome for the schedule.
async fn post(
    client: &reqwest::Client,
    state: &AppState,
    due: &DueDelivery,
) -> (Option<u16>, Option<String>, AttemptOutcome) {
    let failed = |error: String| {
        (
            None,
            Some(one_line(&error)),
            AttemptOutcome::Failed { retry_after: None },
        )
    };
    if !state.settings().webhook_allow_private {
        // An address written into the URL is connected to as it is, without
        // the resolver: check it here too (the setting may have changed
        // since the webhook was made).
        if let Some(why) = crate::targets::refused(&due.url) {
            return failed(format!("not connected: {why}"));
        }
    }
    let Some(key) = state.settings().secret_key.as_ref() else {
        return failed("this server has no secret key to open webhook secrets with".into());
    };
    let secret = match key.open(due.webhook.as_str(), &due.sealed_secret) {
        Ok(secret) => secret,
        Err(err) => return failed(format!("{err}: every replica needs the same key file")),
    };
    let body = event_json(&due.event);
    let id = format!("evt_{}", due.event.id);
    let timestamp = crate::clock::now().unix_timestamp();
    let signature = sign(&secret, &id, timestamp, body.as_bytes());
    let sent = client
        .post(due.url.as_str())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) if err.is_timeout() => {
            return failed(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()));
        }
        // Without the URL: a webhook URL may hold a secret of its receiver's
        // (a path or a query token), and this line goes to the log and the
        // delivery log.
        Err(err) => return failed(crate::error::chain(&err.without_url())),
    };
    let status = response.status();
    if status.is_success() {
        return (Some(status.as_u16()), None, AttemptOutcome::Delivered);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(retry_after);
    // The status alone: nothing of what the receiver said comes back
    // (neither its body nor where it redirects), so a webhook cannot be
    // used to read what an address inside the network answers.
    let error = if status.is_redirection() {
        format!("{status}: redirects are not followed")
    } else {
        status.to_string()
    };
    let outcome = match status.as_u16() {
        410 => AttemptOutcome::Gone,
        429 | 503 => AttemptOutcome::Failed { retry_after },
        _ => AttemptOutcome::Failed { retry_after: None },
    };
    (Some(status.as_u16()), Some(one_line(&error)), outcome)
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = at - crate::clock::now();
    Some(Duration::try_from(wait).unwrap_or_default())
}

/// One line of at most [`ERROR_LINE_LIMIT`] characters, no control
/// characters: what a receiver said cannot forge log lines or fill the
/// database.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_LINE_LIMIT)
        .collect();
    if text.chars().count() > ERROR_LINE_LIMIT {
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receivers_words_become_one_short_line() {
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
        let long = "x".repeat(500);
        assert_eq!(one_line(&long).chars().count(), ERROR_LINE_LIMIT + 1);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert!(retry_after("soon").is_none());
    }
}
