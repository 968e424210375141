//! Every read and write of Pinion's state, written once against [`Sql`] so
//! both engines run the same logic. The SQL is the dialect both speak:
//! `ON CONFLICT … DO UPDATE`, `RETURNING`, and `CAST(?N AS …)` wherever
//! PostgreSQL could not otherwise infer a parameter's type. Multi-statement operations expect to run
//! inside a write transaction the engine opened (and serialised).

use pinion_core::{
    Digest, GitSha, Label, Notes, Region, Repository, RunUrl, Scope, TemplateName, TokenName,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::sql::{Row, Sql, Value};
use crate::{
    Action, AuditEntry, CiProvenance, Expectation, HistoryEntry, HistoryQuery, NewToken, PinRecord,
    PromoteOutcome, Promotion, Refusal, Rollback, RollbackOutcome, RuntimeRecord, Snapshot,
    StoreError, TokenRecord, Write, Written,
};

const PIN_COLUMNS: &str = "template_name, region, image_digest, git_sha, notes, promoted_at, promoted_by, revision, build_sequence";
const HISTORY_COLUMNS: &str = "revision, template_name, region, from_digest, to_digest, git_sha, notes, actor, action, at, ci_run_url, repository, workflow, build_sequence";

/// Applies one write.
pub(crate) fn apply_one(db: &mut dyn Sql, write: &Write) -> Result<Written, StoreError> {
    match write {
        Write::Promote(promotion) => promote(db, promotion).map(Written::Promote),
        Write::Rollback(rollback) => self::rollback(db, rollback).map(Written::Rollback),
        Write::PutRuntime(runtime, at) => put_runtime(db, runtime, *at).map(Written::PutRuntime),
        Write::Refusal(refusal, retain) => {
            record_refusal(db, refusal, *retain).map(|()| Written::Refusal)
        }
    }
}

/// Applies writes in order, each in its own savepoint: one that fails is
/// rolled back alone and reported in its slot.
pub(crate) fn apply_all(
    db: &mut dyn Sql,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    // One write alone: the transaction is its savepoint. An error returns
    // from here, and the whole transaction is rolled back.
    if let [write] = writes {
        return Ok(vec![Ok(apply_one(db, write)?)]);
    }
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        db.execute("SAVEPOINT pinion_write", &[])?;
        let result = apply_one(db, write);
        if result.is_err() {
            db.execute("ROLLBACK TO SAVEPOINT pinion_write", &[])?;
        }
        db.execute("RELEASE SAVEPOINT pinion_write", &[])?;
        results.push(result);
    }
    Ok(results)
}

pub(crate) fn promote(
    db: &mut dyn Sql,
    promotion: &Promotion,
) -> Result<PromoteOutcome, StoreError> {
    // The catalog entry and the current pin in one query: one round trip
    // less per promotion on PostgreSQL. (No column name is in both tables.)
    let rows = db.query(
        &format!(
            "SELECT r.pinnable, {PIN_COLUMNS} FROM runtimes r \
             LEFT JOIN pins p ON p.template_name = r.name AND p.region = ?2 \
             WHERE r.name = ?1"
        ),
        &[
            promotion.template.as_str().into(),
            promotion.region.as_str().into(),
        ],
    )?;
    let Some(row) = rows.first() else {
        return Ok(PromoteOutcome::UnknownTemplate);
    };
    if row.int(0, "runtimes.pinnable")? == 0 {
        return Ok(PromoteOutcome::NotPinnable);
    }
    // No pin: the left join's pin columns are all null.
    let current = match row.opt_text(1) {
        Some(_) => Some(read_pin_at(row, 1)?),
        None => None,
    };
    // Already there: nothing to write, whatever the guards would say, so a
    // retried promotion is idempotent.
    if let Some(pin) = current
        .as_ref()
        .filter(|pin| pin.digest == promotion.digest)
    {
        return Ok(PromoteOutcome::Unchanged { pin: pin.clone() });
    }
    let expectation_met = match (&promotion.expect, &current) {
        (Expectation::Any, _) => true,
        (Expectation::Digest(expected), Some(pin)) => pin.digest == *expected,
        (Expectation::Revision(expected), Some(pin)) => pin.revision == *expected,
        (_, None) => false,
    };
    if !expectation_met {
        return Ok(PromoteOutcome::Conflict { current });
    }
    if let (Some(pin), Some(sequence)) = (&current, promotion.build_sequence) {
        if pin.build_sequence.is_some_and(|newest| sequence < newest) && !promotion.force {
            return Ok(PromoteOutcome::StaleBuild {
                current: pin.clone(),
            });
        }
    }
    let build_sequence = match (
        current.as_ref().and_then(|pin| pin.build_sequence),
        promotion.build_sequence,
    ) {
        (Some(old), Some(new)) => Some(old.max(new)),
        (old, new) => new.or(old),
    };
    let previous = current.map(|pin| pin.digest);
    let change = Change {
        template: &promotion.template,
        region: &promotion.region,
        from: previous.as_ref(),
        to: &promotion.digest,
        git_sha: promotion.git_sha.as_ref(),
        notes: promotion.notes.as_ref(),
        actor: &promotion.actor,
        action: Action::Promote,
        at: promotion.at,
        ci: &promotion.ci,
        build_sequence: promotion.build_sequence,
        pin_build_sequence: build_sequence,
    };
    let pin = write_change(db, &change)?;
    Ok(PromoteOutcome::Moved { pin, previous })
}

pub(crate) fn rollback(
    db: &mut dyn Sql,
    rollback: &Rollback,
) -> Result<RollbackOutcome, StoreError> {
    let Some(current) = current_pin(db, &rollback.template, &rollback.region)? else {
        return Ok(RollbackOutcome::NoPin);
    };
    let key = [
        Value::from(rollback.template.as_str()),
        Value::from(rollback.region.as_str()),
    ];
    let target = match &rollback.to {
        Some(to) => {
            let known = db.query(
                "SELECT 1 FROM history WHERE template_name = ?1 AND region = ?2 AND to_digest = ?3 LIMIT 1",
                &[key[0].clone(), key[1].clone(), to.as_str().into()],
            )?;
            if known.is_empty() {
                return Ok(RollbackOutcome::NotInHistory);
            }
            to.clone()
        }
        None => {
            let newest = db.query(
                "SELECT from_digest FROM history WHERE template_name = ?1 AND region = ?2
                 ORDER BY revision DESC LIMIT 1",
                &key,
            )?;
            match newest.first().and_then(|row| row.opt_text(0)) {
                Some(text) => parse("history", "from_digest", Digest::parse(&text))?,
                None => return Ok(RollbackOutcome::NoPrevious),
            }
        }
    };
    if target == current.digest {
        return Ok(RollbackOutcome::Unchanged { pin: current });
    }
    let change = Change {
        template: &rollback.template,
        region: &rollback.region,
        from: Some(&current.digest),
        to: &target,
        git_sha: None,
        notes: rollback.notes.as_ref(),
        actor: &rollback.actor,
        action: Action::Rollback,
        at: rollback.at,
        ci: &CiProvenance::default(),
        build_sequence: None,
        // Keep the newest build seen: an older pipeline finishing after a
        // rollback still must not move the pin.
        pin_build_sequence: current.build_sequence,
    };
    let pin = write_change(db, &change)?;
    Ok(RollbackOutcome::Moved {
        pin,
        previous: current.digest,
    })
}

pub(crate) fn record_refusal(
    db: &mut dyn Sql,
    refusal: &Refusal,
    retain: usize,
) -> Result<(), StoreError> {
    let inserted = db.query(
        "INSERT INTO audit (at, actor, template_name, region, action, status, code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        &[
            format_time(refusal.at).into(),
            refusal.actor.as_ref().map(TokenName::as_str).into(),
            refusal.template.as_ref().map(TemplateName::as_str).into(),
            refusal.region.as_ref().map(Region::as_str).into(),
            refusal.action.as_str().into(),
            i64::from(refusal.status).into(),
            refusal.code.as_str().into(),
        ],
    )?;
    let newest = inserted
        .first()
        .map(|row| row.int(0, "audit.id"))
        .transpose()?
        .unwrap_or_default();
    let keep = i64::try_from(retain).unwrap_or(i64::MAX);
    db.execute(
        "DELETE FROM audit WHERE id <= ?1",
        &[newest.saturating_sub(keep).into()],
    )?;
    Ok(())
}

pub(crate) fn put_runtime(
    db: &mut dyn Sql,
    runtime: &RuntimeRecord,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let existed = !db
        .query(
            "SELECT 1 FROM runtimes WHERE name = ?1",
            &[runtime.name.as_str().into()],
        )?
        .is_empty();
    db.execute(
        "INSERT INTO runtimes (name, image, pinnable, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
           image = excluded.image, pinnable = excluded.pinnable, updated_at = excluded.updated_at",
        &[
            runtime.name.as_str().into(),
            runtime.repository.as_ref().map(Repository::as_str).into(),
            runtime.pinnable.into(),
            format_time(at).into(),
        ],
    )?;
    Ok(!existed)
}

pub(crate) fn create_token(db: &mut dyn Sql, token: &NewToken) -> Result<(), StoreError> {
    let templates = token.templates.as_ref().map(|names| {
        names
            .iter()
            .map(TemplateName::as_str)
            .collect::<Vec<_>>()
            .join(",")
    });
    let inserted = db.execute(
        "INSERT INTO tokens (name, scope, templates, secret_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &[
            token.name.as_str().into(),
            token.scope.as_str().into(),
            templates.into(),
            Value::Blob(token.secret_hash.to_vec()),
            format_time(token.created_at).into(),
        ],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(StoreError::Constraint(_)) => Err(StoreError::TokenNameTaken(token.name.to_string())),
        Err(other) => Err(other),
    }
}

pub(crate) fn revoke_token(
    db: &mut dyn Sql,
    name: &TokenName,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let changed = db.execute(
        "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
        &[name.as_str().into(), format_time(at).into()],
    )?;
    Ok(changed > 0)
}

pub(crate) fn snapshot(db: &mut dyn Sql) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        pins: query_pins(db)?,
        runtimes: query_runtimes(db)?,
        tokens: query_tokens(db, true)?,
    })
}

pub(crate) fn history(
    db: &mut dyn Sql,
    query: &HistoryQuery,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let rows = db.query(
        &format!(
            "SELECT {HISTORY_COLUMNS} FROM history
             WHERE (CAST(?1 AS TEXT) IS NULL OR template_name = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR region = ?2)
               AND (CAST(?3 AS BIGINT) IS NULL OR revision < ?3)
             ORDER BY revision DESC LIMIT ?4"
        ),
        &[
            query.template.as_ref().map(TemplateName::as_str).into(),
            query.region.as_ref().map(Region::as_str).into(),
            query.before.into(),
            i64::try_from(query.limit).unwrap_or(i64::MAX).into(),
        ],
    )?;
    rows.iter().map(read_history).collect()
}

pub(crate) fn audit(
    db: &mut dyn Sql,
    limit: usize,
    before: Option<i64>,
) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = db.query(
        "SELECT id, at, actor, template_name, region, action, status, code FROM audit
         WHERE (CAST(?1 AS BIGINT) IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        &[
            before.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    )?;
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                id: row.int(0, "audit.id")?,
                refusal: Refusal {
                    at: parse_time("audit", "at", &row.text(1, "audit.at")?)?,
                    actor: row
                        .opt_text(2)
                        .map(|name| parse("audit", "actor", TokenName::parse(&name)))
                        .transpose()?,
                    template: row
                        .opt_text(3)
                        .map(|name| parse("audit", "template_name", TemplateName::parse(&name)))
                        .transpose()?,
                    region: row
                        .opt_text(4)
                        .map(|name| parse("audit", "region", Region::parse(&name)))
                        .transpose()?,
                    action: row.text(5, "audit.action")?,
                    status: u16::try_from(row.int(6, "audit.status")?).unwrap_or(0),
                    code: row.text(7, "audit.code")?,
                },
            })
        })
        .collect()
}

pub(crate) fn tokens(db: &mut dyn Sql) -> Result<Vec<TokenRecord>, StoreError> {
    query_tokens(db, false)
}

/// One change of one pin, as `write_change` applies it.
struct Change<'a> {
    template: &'a TemplateName,
    region: &'a Region,
    from: Option<&'a Digest>,
    to: &'a Digest,
    git_sha: Option<&'a GitSha>,
    notes: Option<&'a Notes>,
    actor: &'a TokenName,
    action: Action,
    at: OffsetDateTime,
    ci: &'a CiProvenance,
    /// The sequence this change was sent with (kept in history).
    build_sequence: Option<i64>,
    /// The sequence the pin keeps: the newest it has seen.
    pin_build_sequence: Option<i64>,
}

/// Appends the history entry, then points the pin at it. The caller owns the
/// transaction, so both or neither are written.
fn write_change(db: &mut dyn Sql, change: &Change<'_>) -> Result<PinRecord, StoreError> {
    let inserted = db.query(
        "INSERT INTO history (template_name, region, from_digest, to_digest, git_sha, notes, actor,
                              action, at, ci_run_url, repository, workflow, build_sequence)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING revision",
        &[
            change.template.as_str().into(),
            change.region.as_str().into(),
            change.from.map(Digest::as_str).into(),
            change.to.as_str().into(),
            change.git_sha.map(GitSha::as_str).into(),
            change.notes.map(Notes::as_str).into(),
            change.actor.as_str().into(),
            change.action.as_str().into(),
            format_time(change.at).into(),
            change.ci.run_url.as_ref().map(RunUrl::as_str).into(),
            change.ci.repository.as_ref().map(Label::as_str).into(),
            change.ci.workflow.as_ref().map(Label::as_str).into(),
            change.build_sequence.into(),
        ],
    )?;
    let revision = inserted
        .first()
        .map(|row| row.int(0, "history.revision"))
        .transpose()?
        .ok_or_else(|| StoreError::Corrupt {
            table: "history",
            column: "revision",
            reason: "the insert returned no revision".into(),
        })?;
    let pin = PinRecord {
        template: change.template.clone(),
        region: change.region.clone(),
        digest: change.to.clone(),
        git_sha: change.git_sha.cloned(),
        notes: change.notes.cloned(),
        promoted_at: change.at,
        promoted_by: change.actor.clone(),
        revision,
        build_sequence: change.pin_build_sequence,
    };
    db.execute(
        &format!(
            "INSERT INTO pins ({PIN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (template_name, region) DO UPDATE SET
               image_digest = excluded.image_digest, git_sha = excluded.git_sha,
               notes = excluded.notes, promoted_at = excluded.promoted_at,
               promoted_by = excluded.promoted_by, revision = excluded.revision,
               build_sequence = excluded.build_sequence"
        ),
        &[
            pin.template.as_str().into(),
            pin.region.as_str().into(),
            pin.digest.as_str().into(),
            pin.git_sha.as_ref().map(GitSha::as_str).into(),
            pin.notes.as_ref().map(Notes::as_str).into(),
            format_time(pin.promoted_at).into(),
            pin.promoted_by.as_str().into(),
            pin.revision.into(),
            pin.build_sequence.into(),
        ],
    )?;
    Ok(pin)
}

fn current_pin(
    db: &mut dyn Sql,
    template: &TemplateName,
    region: &Region,
) -> Result<Option<PinRecord>, StoreError> {
    db.query(
        &format!("SELECT {PIN_COLUMNS} FROM pins WHERE template_name = ?1 AND region = ?2"),
        &[template.as_str().into(), region.as_str().into()],
    )?
    .first()
    .map(read_pin)
    .transpose()
}

fn query_pins(db: &mut dyn Sql) -> Result<Vec<PinRecord>, StoreError> {
    db.query(
        &format!("SELECT {PIN_COLUMNS} FROM pins ORDER BY template_name, region"),
        &[],
    )?
    .iter()
    .map(read_pin)
    .collect()
}

fn query_runtimes(db: &mut dyn Sql) -> Result<Vec<RuntimeRecord>, StoreError> {
    db.query(
        "SELECT name, image, pinnable FROM runtimes ORDER BY name",
        &[],
    )?
    .iter()
    .map(|row| {
        Ok(RuntimeRecord {
            name: parse(
                "runtimes",
                "name",
                TemplateName::parse(&row.text(0, "runtimes.name")?),
            )?,
            repository: row
                .opt_text(1)
                .map(|image| parse("runtimes", "image", Repository::parse(&image)))
                .transpose()?,
            pinnable: row.int(2, "runtimes.pinnable")? != 0,
        })
    })
    .collect()
}

fn query_tokens(db: &mut dyn Sql, active_only: bool) -> Result<Vec<TokenRecord>, StoreError> {
    let sql = if active_only {
        "SELECT name, scope, templates, secret_hash, created_at, revoked_at FROM tokens
         WHERE revoked_at IS NULL ORDER BY id"
    } else {
        "SELECT name, scope, templates, secret_hash, created_at, revoked_at FROM tokens ORDER BY id"
    };
    db.query(sql, &[])?
        .iter()
        .map(|row| {
            let templates = row
                .opt_text(2)
                .map(|list| {
                    list.split(',')
                        .map(|name| parse("tokens", "templates", TemplateName::parse(name)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let secret_hash: [u8; 32] =
                row.blob(3, "tokens.secret_hash")?
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        table: "tokens",
                        column: "secret_hash",
                        reason: "not 32 bytes".into(),
                    })?;
            Ok(TokenRecord {
                name: parse(
                    "tokens",
                    "name",
                    TokenName::parse(&row.text(0, "tokens.name")?),
                )?,
                scope: parse(
                    "tokens",
                    "scope",
                    Scope::parse(&row.text(1, "tokens.scope")?),
                )?,
                templates,
                secret_hash,
                created_at: parse_time("tokens", "created_at", &row.text(4, "tokens.created_at")?)?,
                revoked_at: row
                    .opt_text(5)
                    .map(|at| parse_time("tokens", "revoked_at", &at))
                    .transpose()?,
            })
        })
        .collect()
}

fn read_pin(row: &Row) -> Result<PinRecord, StoreError> {
    read_pin_at(row, 0)
}

/// A pin from [`PIN_COLUMNS`] starting at column `at`.
fn read_pin_at(row: &Row, at: usize) -> Result<PinRecord, StoreError> {
    Ok(PinRecord {
        template: parse(
            "pins",
            "template_name",
            TemplateName::parse(&row.text(at, "pins.template_name")?),
        )?,
        region: parse(
            "pins",
            "region",
            Region::parse(&row.text(at + 1, "pins.region")?),
        )?,
        digest: parse(
            "pins",
            "image_digest",
            Digest::parse(&row.text(at + 2, "pins.image_digest")?),
        )?,
        git_sha: row
            .opt_text(at + 3)
            .map(|sha| parse("pins", "git_sha", GitSha::parse(&sha)))
            .transpose()?,
        notes: row
            .opt_text(at + 4)
            .map(|notes| parse("pins", "notes", Notes::parse(&notes)))
            .transpose()?,
        promoted_at: parse_time(
            "pins",
            "promoted_at",
            &row.text(at + 5, "pins.promoted_at")?,
        )?,
        promoted_by: parse(
            "pins",
            "promoted_by",
            TokenName::parse(&row.text(at + 6, "pins.promoted_by")?),
        )?,
        revision: row.int(at + 7, "pins.revision")?,
        build_sequence: row.opt_int(at + 8),
    })
}

fn read_history(row: &Row) -> Result<HistoryEntry, StoreError> {
    let label = |index: usize, column: &'static str| -> Result<Option<Label>, StoreError> {
        row.opt_text(index)
            .map(|value| parse("history", column, Label::parse(&value)))
            .transpose()
    };
    let action = match row.text(8, "history.action")?.as_str() {
        "promote" => Action::Promote,
        "rollback" => Action::Rollback,
        other => {
            return Err(StoreError::Corrupt {
                table: "history",
                column: "action",
                reason: format!("unknown action `{other}`"),
            });
        }
    };
    Ok(HistoryEntry {
        revision: row.int(0, "history.revision")?,
        template: parse(
            "history",
            "template_name",
            TemplateName::parse(&row.text(1, "history.template_name")?),
        )?,
        region: parse(
            "history",
            "region",
            Region::parse(&row.text(2, "history.region")?),
        )?,
        from_digest: row
            .opt_text(3)
            .map(|digest| parse("history", "from_digest", Digest::parse(&digest)))
            .transpose()?,
        to_digest: parse(
            "history",
            "to_digest",
            Digest::parse(&row.text(4, "history.to_digest")?),
        )?,
        git_sha: row
            .opt_text(5)
            .map(|sha| parse("history", "git_sha", GitSha::parse(&sha)))
            .transpose()?,
        notes: row
            .opt_text(6)
            .map(|notes| parse("history", "notes", Notes::parse(&notes)))
            .transpose()?,
        actor: parse(
            "history",
            "actor",
            TokenName::parse(&row.text(7, "history.actor")?),
        )?,
        action,
        at: parse_time("history", "at", &row.text(9, "history.at")?)?,
        ci: CiProvenance {
            run_url: row
                .opt_text(10)
                .map(|url| parse("history", "ci_run_url", RunUrl::parse(&url)))
                .transpose()?,
            repository: label(11, "repository")?,
            workflow: label(12, "workflow")?,
        },
        build_sequence: row.opt_int(13),
    })
}

fn parse<T>(
    table: &'static str,
    column: &'static str,
    value: Result<T, pinion_core::ParseError>,
) -> Result<T, StoreError> {
    value.map_err(|err| StoreError::Corrupt {
        table,
        column,
        reason: err.to_string(),
    })
}

fn parse_time(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|err| StoreError::Corrupt {
        table,
        column,
        reason: err.to_string(),
    })
}

/// RFC 3339 in UTC. Formatting a valid `OffsetDateTime` as RFC 3339 only
/// fails for years outside 0..=9999, which a clock does not produce.
fn format_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}
