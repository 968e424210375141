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

use std::time::Duration;

use pinion_core::{AttemptOutcome, next_step};
use pinion_store::{AttemptRecord, DueDelivery};
use std::sync::Arc;
use time::OffsetDateTime;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::feed::event_json;
use crate::seal::sign;
use crate::state::AppState;

/// Only a 2xx within this counts as delivered (the contract's figure).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Deliveries claimed at once (and attempted concurrently).
const CLAIM: usize = 256;
/// Attempts in flight at once: a receiver gets at most this many
/// connections from one server.
const IN_FLIGHT: usize = 16;
/// While deliveries keep coming, claims are made at most this often, so each
/// takes up many.
const CLAIM_INTERVAL: Duration = Duration::from_millis(5);
/// Most of a receiver's answer that is read, to describe a failure.
const ERROR_BODY_LIMIT: usize = 1024;
/// The longest `last_error` kept.
const ERROR_LINE_LIMIT: usize = 200;

/// The worker: whenever woken (a write appended events, a redelivery was
/// asked for) and at least once a second, delivers what is due.
pub async fn deliver(state: AppState) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "could not set up the webhook client: no deliveries");
            return;
        }
    };
    let mut closing = state.feed().closing();
    let mut last_claim = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = state.outbox_wake().notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = closing.changed() => return,
        }
        // Drain what is due: each transaction records the attempts just
        // made and claims the next deliveries.
        let mut results = Vec::new();
        loop {
            if results.is_empty() {
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
            last_claim = tokio::time::Instant::now();
            let claimed = match state
                .record_and_claim(std::mem::take(&mut results), CLAIM)
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
            let mut attempts = JoinSet::new();
            let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
            for due in claimed {
                let (client, state, in_flight) = (client.clone(), state.clone(), in_flight.clone());
                attempts.spawn(async move {
                    let _slot = in_flight.acquire_owned().await;
                    attempt(&client, &state, due).await
                });
            }
            while let Some(done) = attempts.join_next().await {
                match done {
                    Ok(result) => results.push(result),
                    Err(err) => tracing::error!(error = %err, "a delivery attempt failed to run"),
                }
            }
        }
    }
}

/// One attempt of one delivery, and what follows it.
async fn attempt(client: &reqwest::Client, state: &AppState, due: DueDelivery) -> AttemptRecord {
    let (status, error, outcome) = post(client, state, &due).await;
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
    AttemptRecord {
        webhook: due.webhook,
        event_id: due.event.id,
        at_ms: unix_ms(OffsetDateTime::now_utc()),
        status,
        error,
        next,
    }
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
    let Some(key) = state.settings().secret_key.as_ref() else {
        return failed("this server has no secret key to open webhook secrets with".into());
    };
    let secret = match key.open(due.webhook.as_str(), &due.sealed_secret) {
        Ok(secret) => secret,
        Err(err) => return failed(format!("{err}: every replica needs the same key file")),
    };
    let body = event_json(&due.event);
    let id = format!("evt_{}", due.event.id);
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
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
    let mut response = match sent {
        Ok(response) => response,
        Err(err) if err.is_timeout() => {
            return failed(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()));
        }
        // Without the URL: a webhook URL may hold a secret of its receiver's
        // (a path or a query token), and this line goes to the log and the
        // delivery log.
        Err(err) => return failed(describe(&err.without_url())),
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
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // A short look at the body, never all of it: a line for the log.
    let mut seen = Vec::new();
    while seen.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.extend_from_slice(&chunk),
            _ => break,
        }
    }
    seen.truncate(ERROR_BODY_LIMIT);
    let said = String::from_utf8_lossy(&seen);
    let said = said
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    let error = if status.is_redirection() {
        format!(
            "{status}: redirects are not followed (to `{}`)",
            location.as_deref().unwrap_or("?")
        )
    } else if said.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {said}")
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
    let wait = at - OffsetDateTime::now_utc();
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

/// An error and its causes, on one line.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
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
