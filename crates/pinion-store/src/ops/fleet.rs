//! Fleet reports: the last report per instance (written in batches by the
//! server that took them, read back by every replica), tombstones for
//! deletions, forgetting the long silent, convergence transitions as events,
//! and the history that registry clean-ups must keep.

use pinion_core::{Convergence, Digest, EventType, InstanceId, Region, TemplateName, TokenName};

use super::events::{self, NewEvent};
use crate::sql::{Columns, Reader, Sql, Value};
use crate::{FleetTransition, InstanceRecord, StoreError};

const INSTANCES: Columns = Columns {
    table: "instances",
    names: &[
        "instance_id",
        "template_name",
        "region",
        "image_digest",
        "healthy",
        "ttl_seconds",
        "first_seen_ms",
        "last_seen_ms",
        "digest_since_ms",
        "deleted",
        "updated_ms",
        "reported_by",
    ],
};

/// Rows one statement writes: 100 rows of 12 values stay far below both
/// engines' limits on parameters.
const ROWS_PER_STATEMENT: usize = 100;

/// Writes the instances' last reports (insert or replace).
pub(crate) fn flush(db: &mut dyn Sql, rows: &[InstanceRecord]) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let width = INSTANCES.names.len();
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|row| {
                let cells: Vec<String> = (1..=width)
                    .map(|column| format!("?{}", row * width + column))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let mut params = Vec::with_capacity(chunk.len() * width);
        for row in chunk {
            params.extend([
                Value::from(row.id.as_str()),
                row.template.as_str().into(),
                row.region.as_str().into(),
                row.digest.as_str().into(),
                row.healthy.into(),
                row.ttl_seconds.into(),
                row.first_seen_ms.into(),
                row.last_seen_ms.into(),
                row.digest_since_ms.into(),
                row.deleted.into(),
                row.updated_ms.into(),
                row.reporter.as_ref().map(TokenName::as_str).into(),
            ]);
        }
        db.execute(
            &format!(
                "INSERT INTO instances ({}) VALUES {}
                 ON CONFLICT (instance_id) DO UPDATE SET
                   template_name = excluded.template_name, region = excluded.region,
                   image_digest = excluded.image_digest, healthy = excluded.healthy,
                   ttl_seconds = excluded.ttl_seconds, first_seen_ms = excluded.first_seen_ms,
                   last_seen_ms = excluded.last_seen_ms, digest_since_ms = excluded.digest_since_ms,
                   deleted = excluded.deleted, updated_ms = excluded.updated_ms,
                   reported_by = excluded.reported_by",
                INSTANCES.list(),
                placeholders.join(", ")
            ),
            &params,
        )?;
    }
    Ok(())
}

/// Notes that a server is taking reports at `now_ms` (never moving back).
pub(crate) fn mark_alive(db: &mut dyn Sql, now_ms: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE fleet_meta SET alive_ms = ?1 WHERE id = 1 AND alive_ms < ?1",
        &[now_ms.into()],
    )?;
    Ok(())
}

/// When a server last took reports: instances live then were live when
/// the reports stopped, and get a time to live's grace after a restart.
pub(crate) fn alive_ms(db: &mut dyn Sql) -> Result<i64, StoreError> {
    let rows = db.query("SELECT alive_ms FROM fleet_meta WHERE id = 1", &[])?;
    match rows.first() {
        Some(row) => row.get(0, "fleet_meta", "alive_ms"),
        None => Ok(0),
    }
}

/// Every instance not deleted.
pub(crate) fn load(db: &mut dyn Sql) -> Result<Vec<InstanceRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM instances WHERE deleted = 0",
            INSTANCES.list()
        ),
        &[],
    )?
    .iter()
    .map(|row| read_instance(&mut INSTANCES.reader(row, 0)))
    .collect()
}

/// One instance, unless deleted.
pub(crate) fn get(db: &mut dyn Sql, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM instances WHERE instance_id = ?1 AND deleted = 0",
            INSTANCES.list()
        ),
        &[id.as_str().into()],
    )?
    .first()
    .map(|row| read_instance(&mut INSTANCES.reader(row, 0)))
    .transpose()
}

/// Every row written at or after `since_ms`, tombstones included.
pub(crate) fn changed_since(
    db: &mut dyn Sql,
    since_ms: i64,
) -> Result<Vec<InstanceRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM instances WHERE updated_ms >= ?1",
            INSTANCES.list()
        ),
        &[since_ms.into()],
    )?
    .iter()
    .map(|row| read_instance(&mut INSTANCES.reader(row, 0)))
    .collect()
}

/// Marks an instance deleted; false if there is none (or it is deleted).
pub(crate) fn delete(db: &mut dyn Sql, id: &InstanceId, at_ms: i64) -> Result<bool, StoreError> {
    Ok(db.execute(
        "UPDATE instances SET deleted = 1, updated_ms = ?2 WHERE instance_id = ?1 AND deleted = 0",
        &[id.as_str().into(), at_ms.into()],
    )? > 0)
}

/// Forgets instances silent since before `before_ms` (past their time to
/// live) and tombstones older than that; returns how many went.
pub(crate) fn forget(db: &mut dyn Sql, before_ms: i64) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM instances
         WHERE (deleted = 1 AND updated_ms < ?1)
            OR (deleted = 0 AND last_seen_ms + ttl_seconds * 1000 < ?1)",
        &[before_ms.into()],
    )
}

/// Records pins' fleets entering states, appending `fleet.converged` and
/// `fleet.stalled` once per pin revision, whichever replica saw it first.
pub(crate) fn record_transitions(
    db: &mut dyn Sql,
    transitions: &[FleetTransition],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::new();
    for seen in transitions {
        let key = [
            Value::from(seen.template.as_str()),
            Value::from(seen.region.as_str()),
        ];
        let before = db.query(
            "SELECT revision, state FROM fleet_state WHERE template_name = ?1 AND region = ?2",
            &key,
        )?;
        let before: Option<(i64, String)> = before
            .first()
            .map(|row| {
                Ok::<_, StoreError>((
                    row.get(0, "fleet_state", "revision")?,
                    row.get(1, "fleet_state", "state")?,
                ))
            })
            .transpose()?;
        if before.as_ref().is_some_and(|(revision, state)| {
            *revision == seen.revision && state == seen.state.as_str()
        }) {
            continue;
        }
        db.execute(
            "INSERT INTO fleet_state (template_name, region, revision, state) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (template_name, region) DO UPDATE SET
               revision = excluded.revision, state = excluded.state",
            &[
                key[0].clone(),
                key[1].clone(),
                seen.revision.into(),
                seen.state.as_str().into(),
            ],
        )?;
        let kind = match seen.state {
            Convergence::Converged => EventType::FleetConverged,
            Convergence::Stalled => EventType::FleetStalled,
            Convergence::Converging | Convergence::Empty => continue,
        };
        ids.push(events::append(
            db,
            NewEvent {
                kind,
                at: seen.at,
                template: Some(&seen.template),
                region: Some(&seen.region),
                data: events::data(&pinion_api::events::FleetState {
                    image_digest: seen.digest.to_string(),
                    revision: seen.revision,
                    current: seen.counts.current,
                    behind: seen.counts.behind,
                    unknown: seen.counts.unknown,
                })?,
            },
        )?);
    }
    Ok(ids)
}

/// The digests of each pin's newest `per_pin` history entries: what a
/// rollback may return to.
pub(crate) fn recent_digests(
    db: &mut dyn Sql,
    per_pin: usize,
) -> Result<Vec<(TemplateName, Region, Digest)>, StoreError> {
    db.query(
        "SELECT template_name, region, to_digest FROM (
             SELECT template_name, region, to_digest,
                    ROW_NUMBER() OVER (PARTITION BY template_name, region ORDER BY revision DESC) AS n
             FROM history WHERE action IN ('promote', 'rollback')) recent
         WHERE n <= ?1",
        &[i64::try_from(per_pin).unwrap_or(i64::MAX).into()],
    )?
    .iter()
    .map(|row| {
        Ok((
            row.get(0, "history", "template_name")?,
            row.get(1, "history", "region")?,
            row.get(2, "history", "to_digest")?,
        ))
    })
    .collect()
}

fn read_instance(row: &mut Reader<'_>) -> Result<InstanceRecord, StoreError> {
    Ok(InstanceRecord {
        id: row.next()?,
        template: row.next()?,
        region: row.next()?,
        digest: row.next()?,
        healthy: row.next()?,
        ttl_seconds: row.next()?,
        first_seen_ms: row.next()?,
        last_seen_ms: row.next()?,
        digest_since_ms: row.next()?,
        deleted: row.next()?,
        updated_ms: row.next()?,
        reporter: row.next()?,
    })
}
