//! The change feed: events appended in the transaction of the change they
//! record (with a delivery row for every webhook that wants them: the
//! outbox), read in pages, pruned, and the drift watcher's flips.

use pinion_core::{Digest, EventType, Region, TemplateName};
use time::OffsetDateTime;

use super::{format_time, returned};
use crate::sql::{Columns, Reader, Sql, Value};
use crate::{DriftObservation, EventPage, EventQuery, EventRecord, StoreError};

pub(crate) const EVENTS: Columns = Columns {
    table: "events",
    names: &["id", "type", "at", "template_name", "region", "data"],
};

/// An event about to be appended.
pub(crate) struct NewEvent<'a> {
    pub kind: EventType,
    pub at: OffsetDateTime,
    pub template: Option<&'a TemplateName>,
    pub region: Option<&'a Region>,
    pub data: serde_json::Value,
}

/// An event's `data`, from its typed payload (`pinion_api::events`).
pub(crate) fn data(payload: &impl serde::Serialize) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(payload)
        .map_err(|err| StoreError::Statement(format!("an event's data does not encode: {err}")))
}

/// Appends an event and queues its delivery to every enabled webhook whose
/// filters take it, in the caller's transaction; returns its id.
pub(crate) fn append(db: &mut dyn Sql, event: NewEvent<'_>) -> Result<i64, StoreError> {
    let at = event_time(event.at)?;
    let inserted = db.query(
        "INSERT INTO events (type, at, template_name, region, data)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        &[
            event.kind.as_str().into(),
            at.into(),
            event.template.map(TemplateName::as_str).into(),
            event.region.map(Region::as_str).into(),
            event.data.to_string().into(),
        ],
    )?;
    let id: i64 = returned(&inserted, "events", "id")?;
    // Filters are comma-separated lists, matched as `,name,` by position:
    // a LIKE whose pattern is a bound parameter makes SQLite prepare the
    // statement again whenever the value changes, on every event.
    let listed = |name: &str| format!(",{name},");
    let position = db.position_function();
    db.execute(
        &format!(
            "INSERT INTO deliveries (webhook, event_id, state, attempts, next_attempt_ms)
             SELECT name, ?1, 'pending', 0, ?2 FROM webhooks
             WHERE disabled_at IS NULL
               AND (events IS NULL OR {position}(',' || events || ',', ?3) > 0)
               AND (templates IS NULL
                    OR (CAST(?4 AS TEXT) IS NOT NULL
                        AND {position}(',' || templates || ',', ?4) > 0))"
        ),
        &[
            id.into(),
            unix_ms(event.at).into(),
            listed(event.kind.as_str()).into(),
            event.template.map(|t| listed(t.as_str())).into(),
        ],
    )?;
    Ok(id)
}

/// A page of events after `query.after`, oldest first, and where the log
/// stands, read in one transaction.
pub(crate) fn page(db: &mut dyn Sql, query: &EventQuery) -> Result<EventPage, StoreError> {
    let state = db.query(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM events), pruned_through FROM event_log WHERE id = 1",
        &[],
    )?;
    let row = state.first().ok_or_else(|| StoreError::Corrupt {
        table: "event_log",
        column: "pruned_through",
        reason: "the row is missing".into(),
    })?;
    let newest: i64 = row.get(0, "events", "id")?;
    let pruned_through: i64 = row.get(1, "event_log", "pruned_through")?;
    let mut params: Vec<Value> = vec![
        query.after.into(),
        i64::try_from(query.limit).unwrap_or(i64::MAX).into(),
    ];
    let mut filters = String::new();
    if let Some(template) = &query.template {
        params.push(template.as_str().into());
        filters.push_str(&format!(" AND template_name = ?{}", params.len()));
    }
    if !query.types.is_empty() {
        let placeholders: Vec<String> = query
            .types
            .iter()
            .map(|kind| {
                params.push(kind.as_str().into());
                format!("?{}", params.len())
            })
            .collect();
        filters.push_str(&format!(" AND type IN ({})", placeholders.join(", ")));
    }
    filters.push_str(&super::only_templates(
        query.templates.as_deref(),
        &mut params,
    ));
    let rows = db.query(
        &format!(
            "SELECT {} FROM events WHERE id > ?1{filters} ORDER BY id LIMIT ?2",
            EVENTS.list()
        ),
        &params,
    )?;
    let events = rows
        .iter()
        .map(|row| read_event(&mut EVENTS.reader(row, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EventPage {
        events,
        head: newest.max(pruned_through),
        pruned_through,
    })
}

/// Prunes the events that are both older than `before` and beyond the
/// newest `keep`; returns how many went.
pub(crate) fn prune(
    db: &mut dyn Sql,
    before: OffsetDateTime,
    keep: i64,
) -> Result<u64, StoreError> {
    // Never an event a delivery still waits for: at least once means the
    // event is there when its attempt comes, however long the receiver
    // was down.
    let found = db.query(
        "SELECT MAX(id) FROM events
         WHERE id <= (SELECT COALESCE(MAX(id), 0) FROM events) - ?1 AND at < ?2
           AND id < (SELECT COALESCE(MIN(event_id), 9223372036854775807) FROM deliveries
                     WHERE state = 'pending')",
        &[keep.into(), event_time(before)?.into()],
    )?;
    let Some(through) = found
        .first()
        .map(|row| row.get::<Option<i64>>(0, "events", "id"))
        .transpose()?
        .flatten()
    else {
        return Ok(0);
    };
    db.execute(
        "DELETE FROM deliveries WHERE event_id <= ?1",
        &[through.into()],
    )?;
    let pruned = db.execute("DELETE FROM events WHERE id <= ?1", &[through.into()])?;
    db.execute(
        "UPDATE event_log SET pruned_through = ?1 WHERE id = 1 AND pruned_through < ?1",
        &[through.into()],
    )?;
    Ok(pruned)
}

/// Records what the drift watcher saw, appending `pin.stale` when a pin is
/// first seen stale (or its tag moved again while it was) and `pin.fresh`
/// when a stale pin is at its tag again. The last state per pin is kept in
/// the database, so several replicas' watchers agree on what is a flip.
pub(crate) fn record_drift(
    db: &mut dyn Sql,
    observations: &[DriftObservation],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::new();
    for seen in observations {
        let key = [
            Value::from(seen.template.as_str()),
            Value::from(seen.region.as_str()),
        ];
        let before = db.query(
            "SELECT stale, tag_digest FROM drift_state WHERE template_name = ?1 AND region = ?2",
            &key,
        )?;
        let before: Option<(bool, Option<Digest>)> = before
            .first()
            .map(|row| {
                Ok::<_, StoreError>((
                    row.get(0, "drift_state", "stale")?,
                    row.get(1, "drift_state", "tag_digest")?,
                ))
            })
            .transpose()?;
        let kind = match (&before, seen.stale) {
            (None | Some((false, _)), true) => Some(EventType::PinStale),
            (Some((true, tag)), true) if tag.as_ref() != Some(&seen.tag_digest) => {
                Some(EventType::PinStale)
            }
            (Some((true, _)), false) => Some(EventType::PinFresh),
            _ => None,
        };
        let unchanged = before.as_ref().is_some_and(|(stale, tag)| {
            *stale == seen.stale && tag.as_ref() == Some(&seen.tag_digest)
        });
        if !unchanged {
            db.execute(
                "INSERT INTO drift_state (template_name, region, stale, tag_digest) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (template_name, region) DO UPDATE SET
                   stale = excluded.stale, tag_digest = excluded.tag_digest",
                &[
                    key[0].clone(),
                    key[1].clone(),
                    seen.stale.into(),
                    seen.tag_digest.as_str().into(),
                ],
            )?;
        }
        let Some(kind) = kind else { continue };
        let stale_since = seen.stale_since.map(format_time).transpose()?;
        let data = data(&pinion_api::events::PinDrift {
            image_digest: seen.digest.to_string(),
            tag: seen.tag.clone(),
            tag_digest: seen.tag_digest.to_string(),
            stale_since,
        })?;
        ids.push(append(
            db,
            NewEvent {
                kind,
                at: seen.at,
                template: Some(&seen.template),
                region: Some(&seen.region),
                data,
            },
        )?);
    }
    Ok(ids)
}

/// An event, from [`EVENTS`] in order.
pub(crate) fn read_event(row: &mut Reader<'_>) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: row.next()?,
        kind: row.next()?,
        at: row.next()?,
        template: row.next()?,
        region: row.next()?,
        data: row.next()?,
    })
}

/// RFC 3339 in UTC with exactly six fractional digits: valid RFC 3339 that
/// also sorts as text.
pub(crate) fn event_time(at: OffsetDateTime) -> Result<String, StoreError> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .map_err(|err| StoreError::Statement(format!("cannot store the time `{at}`: {err}")))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
