//! Webhook subscriptions and their delivery outbox: claiming due
//! deliveries (one replica at a time), recording attempts, the delivery log.

use pinion_core::{EventType, NextStep, TemplateName, WebhookName};
use time::OffsetDateTime;

use super::events::{self, EVENTS, NewEvent, unix_ms};
use super::format_time;
use crate::sql::{Columns, Reader, Sql, Value};
use crate::{
    AttemptRecord, DeliveryRecord, DeliveryState, DueDelivery, StoreError, WebhookPut,
    WebhookRecord, WebhookUpdate,
};

const WEBHOOKS: Columns = Columns {
    table: "webhooks",
    names: &[
        "name",
        "url",
        "events",
        "templates",
        "secret",
        "created_at",
        "disabled_at",
        "disabled_reason",
    ],
};

const DELIVERIES: Columns = Columns {
    table: "deliveries",
    names: &[
        "webhook",
        "event_id",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "next_attempt_ms",
        "delivered_ms",
    ],
};

/// How long a claimed delivery stays claimed: longer than an attempt may
/// take (15 s) and its recording, so a replica's claim lapses only when it
/// died mid-attempt.
pub const CLAIM_LEASE_MS: i64 = 30_000;

fn joined<T>(values: Option<&[T]>, name: impl Fn(&T) -> &str) -> Option<String> {
    values.map(|values| values.iter().map(name).collect::<Vec<_>>().join(","))
}

pub(crate) fn put(db: &mut dyn Sql, update: &WebhookUpdate) -> Result<WebhookPut, StoreError> {
    let existed = get(db, &update.name)?.is_some();
    let events = joined(update.events.as_deref(), |kind: &EventType| kind.as_str());
    let templates = joined(update.templates.as_deref(), TemplateName::as_str);
    let at = format_time(update.at)?;
    if existed {
        // A change keeps the secret and enables a disabled webhook again.
        db.execute(
            "UPDATE webhooks SET url = ?2, events = ?3, templates = ?4, updated_at = ?5,
                                 disabled_at = NULL, disabled_reason = NULL
             WHERE name = ?1",
            &[
                update.name.as_str().into(),
                update.url.as_str().into(),
                events.into(),
                templates.into(),
                at.into(),
            ],
        )?;
    } else {
        db.execute(
            "INSERT INTO webhooks (name, url, events, templates, secret, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            &[
                update.name.as_str().into(),
                update.url.as_str().into(),
                events.into(),
                templates.into(),
                Value::Blob(update.sealed_secret.clone()),
                at.into(),
            ],
        )?;
    }
    let stored = get(db, &update.name)?.ok_or_else(|| StoreError::Corrupt {
        table: "webhooks",
        column: "name",
        reason: "the webhook just written is not there".into(),
    })?;
    Ok(if existed {
        WebhookPut::Changed(stored)
    } else {
        WebhookPut::Created(stored)
    })
}

pub(crate) fn get(
    db: &mut dyn Sql,
    name: &WebhookName,
) -> Result<Option<WebhookRecord>, StoreError> {
    db.query(
        &format!("SELECT {} FROM webhooks WHERE name = ?1", WEBHOOKS.list()),
        &[name.as_str().into()],
    )?
    .first()
    .map(|row| read_webhook(&mut WEBHOOKS.reader(row, 0)))
    .transpose()
}

pub(crate) fn list(db: &mut dyn Sql) -> Result<Vec<WebhookRecord>, StoreError> {
    db.query(
        &format!("SELECT {} FROM webhooks ORDER BY name", WEBHOOKS.list()),
        &[],
    )?
    .iter()
    .map(|row| read_webhook(&mut WEBHOOKS.reader(row, 0)))
    .collect()
}

/// Deletes a webhook and its deliveries; false if there was none.
pub(crate) fn delete(db: &mut dyn Sql, name: &WebhookName) -> Result<bool, StoreError> {
    db.execute(
        "DELETE FROM deliveries WHERE webhook = ?1",
        &[name.as_str().into()],
    )?;
    Ok(db.execute(
        "DELETE FROM webhooks WHERE name = ?1",
        &[name.as_str().into()],
    )? > 0)
}

/// The newest `limit` deliveries of a webhook, newest event first.
pub(crate) fn deliveries(
    db: &mut dyn Sql,
    name: &WebhookName,
    limit: usize,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM deliveries WHERE webhook = ?1 ORDER BY event_id DESC LIMIT ?2",
            DELIVERIES.list()
        ),
        &[
            name.as_str().into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    )?
    .iter()
    .map(|row| read_delivery(&mut DELIVERIES.reader(row, 0)))
    .collect()
}

/// What a redelivery request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Queued for an attempt now.
    Queued,
    /// No such delivery.
    Unknown,
    /// The webhook is disabled; it must be enabled (PUT) first.
    Disabled,
}

/// Queues one more attempt of a delivery, now.
pub(crate) fn redeliver(
    db: &mut dyn Sql,
    name: &WebhookName,
    event_id: i64,
    now: OffsetDateTime,
) -> Result<Redelivery, StoreError> {
    match get(db, name)? {
        None => return Ok(Redelivery::Unknown),
        Some(webhook) if webhook.disabled_at.is_some() => return Ok(Redelivery::Disabled),
        Some(_) => {}
    }
    let changed = db.execute(
        "UPDATE deliveries SET state = 'pending', next_attempt_ms = ?3, claimed_until = NULL
         WHERE webhook = ?1 AND event_id = ?2",
        &[name.as_str().into(), event_id.into(), unix_ms(now).into()],
    )?;
    Ok(if changed > 0 {
        Redelivery::Queued
    } else {
        Redelivery::Unknown
    })
}

/// Claims up to `limit` deliveries that are due, for `CLAIM_LEASE_MS`:
/// another replica skips them meanwhile (rows it cannot lock are skipped,
/// not waited for), and picks them up once the lease lapses if this one
/// died mid-attempt. Deliveries to the webhooks in `skip` (those the
/// caller has enough of in flight, or is resting) are left for later.
pub(crate) fn claim_due(
    db: &mut dyn Sql,
    now: OffsetDateTime,
    limit: usize,
    skip: &[WebhookName],
) -> Result<Vec<DueDelivery>, StoreError> {
    let now_ms = unix_ms(now);
    let skipped = if skip.is_empty() {
        String::new()
    } else {
        let placeholders: Vec<String> = (0..skip.len()).map(|n| format!("?{}", n + 3)).collect();
        format!(" AND d.webhook NOT IN ({})", placeholders.join(", "))
    };
    let mut params = vec![
        now_ms.into(),
        i64::try_from(limit).unwrap_or(i64::MAX).into(),
    ];
    params.extend(skip.iter().map(|name| Value::from(name.as_str())));
    let rows = db.query(
        &format!(
            "SELECT d.webhook, d.event_id, d.attempts, w.url, w.secret, {events}
             FROM deliveries d
             JOIN webhooks w ON w.name = d.webhook
             JOIN events e ON e.id = d.event_id
             WHERE d.state = 'pending' AND d.next_attempt_ms <= ?1
               AND (d.claimed_until IS NULL OR d.claimed_until < ?1)
               AND w.disabled_at IS NULL{skipped}
             ORDER BY d.next_attempt_ms, d.event_id LIMIT ?2{lock}",
            events = EVENTS
                .names
                .iter()
                .map(|name| format!("e.{name}"))
                .collect::<Vec<_>>()
                .join(", "),
            lock = db.skip_locked("d"),
        ),
        &params,
    )?;
    let mut due = Vec::with_capacity(rows.len());
    for row in &rows {
        let delivery = DueDelivery {
            webhook: row.get(0, "deliveries", "webhook")?,
            attempts: row.get(2, "deliveries", "attempts")?,
            url: row.get(3, "webhooks", "url")?,
            sealed_secret: row.get(4, "webhooks", "secret")?,
            event: events::read_event(&mut EVENTS.reader(row, 5))?,
        };
        db.execute(
            "UPDATE deliveries SET claimed_until = ?3 WHERE webhook = ?1 AND event_id = ?2",
            &[
                delivery.webhook.as_str().into(),
                delivery.event.id.into(),
                (now_ms + CLAIM_LEASE_MS).into(),
            ],
        )?;
        due.push(delivery);
    }
    Ok(due)
}

/// Records attempts and what follows each; a receiver's `410` disables its
/// webhook, fails its pending deliveries and appends `webhook.disabled`.
/// Returns whether an event was appended.
pub(crate) fn record_attempts(
    db: &mut dyn Sql,
    attempts: &[AttemptRecord],
) -> Result<bool, StoreError> {
    let mut appended = false;
    for attempt in attempts {
        let (state, next_ms, delivered_ms) = match attempt.next {
            NextStep::Delivered => (DeliveryState::Delivered, attempt.at_ms, Some(attempt.at_ms)),
            NextStep::RetryAfter(wait) => (
                DeliveryState::Pending,
                attempt
                    .at_ms
                    .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                None,
            ),
            NextStep::GiveUp | NextStep::Disable => (DeliveryState::Failed, attempt.at_ms, None),
        };
        db.execute(
            "UPDATE deliveries SET state = ?3, attempts = attempts + 1, last_status = ?4,
                                   last_error = ?5, next_attempt_ms = ?6, delivered_ms = ?7,
                                   claimed_until = NULL
             WHERE webhook = ?1 AND event_id = ?2",
            &[
                attempt.webhook.as_str().into(),
                attempt.event_id.into(),
                state.as_str().into(),
                attempt.status.map(i64::from).into(),
                attempt.error.as_deref().into(),
                next_ms.into(),
                delivered_ms.into(),
            ],
        )?;
        if attempt.next == NextStep::Disable {
            appended |= disable(db, attempt)?;
        }
    }
    Ok(appended)
}

/// Disables a webhook whose receiver answered `410 Gone`.
fn disable(db: &mut dyn Sql, attempt: &AttemptRecord) -> Result<bool, StoreError> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(attempt.at_ms) * 1_000_000)
        .map_err(|err| StoreError::Statement(format!("attempt time: {err}")))?;
    let reason = "the receiver answered 410 Gone";
    let changed = db.execute(
        "UPDATE webhooks SET disabled_at = ?2, disabled_reason = ?3
         WHERE name = ?1 AND disabled_at IS NULL",
        &[
            attempt.webhook.as_str().into(),
            format_time(at)?.into(),
            reason.into(),
        ],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    db.execute(
        "UPDATE deliveries SET state = 'failed', last_error = 'the webhook is disabled',
                               claimed_until = NULL
         WHERE webhook = ?1 AND state = 'pending'",
        &[attempt.webhook.as_str().into()],
    )?;
    events::append(
        db,
        NewEvent {
            kind: EventType::WebhookDisabled,
            at,
            template: None,
            region: None,
            data: events::data(&pinion_api::events::WebhookDisabled {
                webhook: attempt.webhook.to_string(),
                reason: reason.to_owned(),
                event_id: attempt.event_id,
            })?,
        },
    )?;
    Ok(true)
}

/// Releases every claim: for a server that is the only one on its
/// database (SQLite), whatever is claimed at its start was claimed by a run
/// of its own that died, and is due again at once.
pub(crate) fn release_claims(db: &mut dyn Sql) -> Result<u64, StoreError> {
    db.execute(
        "UPDATE deliveries SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
        &[],
    )
}

/// Whether any delivery is due now (a cheap look before claiming, which
/// writes).
pub(crate) fn any_due(db: &mut dyn Sql, now: OffsetDateTime) -> Result<bool, StoreError> {
    let now_ms = unix_ms(now);
    Ok(!db
        .query(
            "SELECT 1 FROM deliveries
             WHERE state = 'pending' AND next_attempt_ms <= ?1
               AND (claimed_until IS NULL OR claimed_until < ?1)
             LIMIT 1",
            &[now_ms.into()],
        )?
        .is_empty())
}

fn read_webhook(row: &mut Reader<'_>) -> Result<WebhookRecord, StoreError> {
    Ok(WebhookRecord {
        name: row.next()?,
        url: row.next()?,
        events: row.next()?,
        templates: row.next()?,
        sealed_secret: row.next()?,
        created_at: row.next()?,
        disabled_at: row.next()?,
        disabled_reason: row.next()?,
    })
}

fn read_delivery(row: &mut Reader<'_>) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        webhook: row.next()?,
        event_id: row.next()?,
        state: row.next()?,
        attempts: row.next()?,
        last_status: row.next()?,
        last_error: row.next()?,
        next_attempt_ms: row.next()?,
        delivered_ms: row.next()?,
    })
}
