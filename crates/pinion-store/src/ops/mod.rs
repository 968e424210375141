//! Every read and write of Pinion's state, written once against [`Sql`] so
//! both engines run the same logic. The SQL is the dialect both speak:
//! `ON CONFLICT … DO UPDATE`, `RETURNING`, and `CAST(?N AS …)` wherever
//! PostgreSQL could not otherwise infer a parameter's type. Multi-statement operations expect to run
//! inside a write transaction the engine opened (and serialised).

mod events;
mod fleet;
mod sessions;
mod webhooks;

pub(crate) use events::{page as events_page, prune as prune_events, record_drift};
pub(crate) use fleet::{
    alive_ms as fleet_alive_ms, changed_since as instances_changed_since,
    delete as delete_instance, flush as flush_instances, forget as forget_instances,
    get as instance, load as load_instances, mark_alive as mark_fleet_alive, recent_digests,
    record_transitions as record_fleet_transitions,
};
pub(crate) use sessions::{create as create_session, end as end_session, get as session};
pub use webhooks::{CLAIM_LEASE_MS, Redelivery};
pub(crate) use webhooks::{
    any_due as any_delivery_due, claim_due as claim_deliveries, delete as delete_webhook,
    deliveries, get as webhook, list as webhooks, put as put_webhook, record_attempts, redeliver,
    release_claims,
};

use events::{NewEvent, data};
use pinion_api::events as payload;

use pinion_core::{
    Ask, CanaryAsk, CanaryDecision, CanaryPin, Digest, EventType, GitSha, HoldReason, ImageRef,
    Label, Notes, Percent, PinState, PromoteDecision, Region, Repository, RunUrl, Soak,
    TemplateName, TokenName, decide_canary, decide_promotion,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::sql::{Columns, Reader, Row, Sql, Value};
use crate::{
    AbortCause, AbortOutcome, Action, AuditEntry, AuditQuery, Canary, CanaryAbort, CanaryOutcome,
    CanaryRequest, CiProvenance, HistoryEntry, HistoryQuery, Hold, HoldOutcome, HoldRequest,
    NewToken, PinRecord, PromoteOutcome, Promotion, Refusal, Release, ReleaseOutcome, Rollback,
    RollbackOutcome, RuntimeRecord, Snapshot, SoakFigures, StoreError, TokenRecord,
};

const PINS: Columns = Columns {
    table: "pins",
    names: &[
        "template_name",
        "region",
        "image_digest",
        "git_sha",
        "notes",
        "promoted_at",
        "promoted_by",
        "revision",
        "build_sequence",
        "held_reason",
        "held_by",
        "held_at",
        "canary_digest",
        "canary_percent",
        "canary_started_at",
        "canary_started_by",
        "ci_run_url",
    ],
};

const HISTORY: Columns = Columns {
    table: "history",
    names: &[
        "revision",
        "template_name",
        "region",
        "from_digest",
        "to_digest",
        "git_sha",
        "notes",
        "actor",
        "action",
        "at",
        "ci_run_url",
        "repository",
        "workflow",
        "build_sequence",
        "forced",
        "soak_source",
        "soaked_ms",
        "soak_required_ms",
    ],
};

const AUDIT: Columns = Columns {
    table: "audit",
    names: &[
        "id",
        "at",
        "actor",
        "template_name",
        "region",
        "action",
        "status",
        "code",
        "source",
        "count",
    ],
};

const RUNTIMES: Columns = Columns {
    table: "runtimes",
    names: &["name", "image", "pinnable"],
};

const TOKENS: Columns = Columns {
    table: "tokens",
    names: &[
        "name",
        "scope",
        "templates",
        "secret_hash",
        "created_at",
        "revoked_at",
        "created_by",
        "expires_at",
    ],
};

pub(crate) fn promote(
    db: &mut dyn Sql,
    promotion: &Promotion,
) -> Result<PromoteOutcome, StoreError> {
    // The catalog entry and the current pin in one query: one round trip
    // less per promotion on PostgreSQL. (No column name is in both tables.)
    let rows = db.query(
        &format!(
            "SELECT r.pinnable, r.image, {} FROM runtimes r \
             LEFT JOIN pins p ON p.template_name = r.name AND p.region = ?2 \
             WHERE r.name = ?1",
            PINS.list()
        ),
        &[
            promotion.template.as_str().into(),
            promotion.region.as_str().into(),
        ],
    )?;
    let Some(row) = rows.first() else {
        return Ok(PromoteOutcome::UnknownTemplate);
    };
    if !row.get::<bool>(0, "runtimes", "pinnable")? {
        return Ok(PromoteOutcome::NotPinnable);
    }
    let repository: Option<Repository> = row.get(1, "runtimes", "image")?;
    // No pin: the left join's pin columns are all null.
    let current = match row.get::<Option<String>>(2, "pins", "template_name")? {
        Some(_) => Some(read_pin(&mut PINS.reader(row, 2))?),
        None => None,
    };
    let state = current.as_ref().map(|pin| PinState {
        digest: &pin.digest,
        revision: pin.revision,
        build_sequence: pin.build_sequence,
        held: pin.hold.is_some(),
    });
    let ask = Ask {
        digest: &promotion.digest,
        expect: &promotion.expect,
        build_sequence: promotion.build_sequence,
        force: promotion.force,
        may_override_hold: promotion.may_override_hold,
        soak: promotion.soak,
    };
    let decision = decide_promotion(state, ask);
    let (build_sequence, forced, current) = match (decision, current) {
        (
            PromoteDecision::Move {
                build_sequence,
                forced,
            },
            current,
        ) => (build_sequence, forced, current),
        (PromoteDecision::Unchanged, Some(pin)) => return Ok(PromoteOutcome::Unchanged { pin }),
        (PromoteDecision::StaleBuild { .. }, Some(pin)) => {
            return Ok(PromoteOutcome::StaleBuild { current: pin });
        }
        (PromoteDecision::Held, Some(pin)) => return Ok(PromoteOutcome::Held { current: pin }),
        (PromoteDecision::SoakRequired { soaked, required }, _) => {
            return Ok(PromoteOutcome::SoakRequired { soaked, required });
        }
        (PromoteDecision::Conflict, current) => {
            return Ok(PromoteOutcome::Conflict { current });
        }
        // The rule answers these only about an existing pin.
        (
            PromoteDecision::Unchanged | PromoteDecision::StaleBuild { .. } | PromoteDecision::Held,
            None,
        ) => {
            return Err(StoreError::Statement(
                "the promote rule judged a pin that does not exist".into(),
            ));
        }
    };
    let hold = current.as_ref().and_then(|pin| pin.hold.clone());
    let canary = current.as_ref().and_then(|pin| pin.canary.clone());
    let previous = current.map(|pin| pin.digest);
    let change = Change {
        template: &promotion.template,
        region: &promotion.region,
        from: previous.as_ref(),
        to: &promotion.digest,
        git_sha: promotion.git_sha.as_ref(),
        notes: promotion.notes.as_ref(),
        actor: &promotion.actor,
        action: Move::Promote,
        at: promotion.at,
        ci: &promotion.ci,
        build_sequence: promotion.build_sequence,
        pin_build_sequence: build_sequence,
        repository: repository.as_ref(),
        forced,
        hold,
        canary,
        soak: match (promotion.soak, &promotion.soak_source) {
            (Soak::Met { soaked, required } | Soak::Short { soaked, required }, Some(source)) => {
                Some(SoakFigures {
                    source: source.clone(),
                    soaked,
                    required,
                })
            }
            _ => None,
        },
        keep_canary: promotion.keep_canary,
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
    if rollback
        .expected
        .as_ref()
        .is_some_and(|expected| *expected != current.digest)
    {
        return Ok(RollbackOutcome::Conflict { current });
    }
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
                   AND action IN ('promote', 'rollback')
                 ORDER BY revision DESC LIMIT 1",
                &key,
            )?;
            let previous = match newest.first() {
                Some(row) => row.get::<Option<Digest>>(0, "history", "from_digest")?,
                None => None,
            };
            match previous {
                Some(digest) => digest,
                None => return Ok(RollbackOutcome::NoPrevious),
            }
        }
    };
    let hold = rollback.hold.as_ref().map(|reason| Hold {
        reason: reason.clone(),
        held_by: rollback.actor.clone(),
        held_at: rollback.at,
    });
    if target == current.digest {
        // Already there; a hold asked for is still taken.
        return Ok(RollbackOutcome::Unchanged {
            pin: match (hold, &current.hold) {
                (Some(hold), None) => set_hold(db, current, hold)?,
                _ => current,
            },
        });
    }
    let repository: Option<Repository> = match db
        .query(
            "SELECT image FROM runtimes WHERE name = ?1",
            &[key[0].clone()],
        )?
        .first()
    {
        Some(row) => row.get(0, "runtimes", "image")?,
        None => None,
    };
    let change = Change {
        template: &rollback.template,
        region: &rollback.region,
        from: Some(&current.digest),
        to: &target,
        git_sha: None,
        notes: rollback.notes.as_ref(),
        actor: &rollback.actor,
        action: Move::Rollback,
        at: rollback.at,
        ci: &CiProvenance::default(),
        build_sequence: None,
        // Keep the newest build seen: an older pipeline finishing after a
        // rollback still must not move the pin.
        pin_build_sequence: current.build_sequence,
        repository: repository.as_ref(),
        forced: false,
        hold: current.hold.clone(),
        canary: current.canary.clone(),
        soak: None,
        keep_canary: rollback.keep_canary,
    };
    let mut pin = write_change(db, &change)?;
    // Held in the same transaction; a hold it has already stands.
    if let (Some(hold), None) = (hold, &current.hold) {
        pin = set_hold(db, pin, hold)?;
    }
    Ok(RollbackOutcome::Moved {
        pin,
        previous: current.digest,
    })
}

pub(crate) fn hold(db: &mut dyn Sql, request: &HoldRequest) -> Result<HoldOutcome, StoreError> {
    let Some(pin) = current_pin(db, &request.template, &request.region)? else {
        return Ok(HoldOutcome::NoPin);
    };
    if pin.hold.is_some() {
        return Ok(HoldOutcome::AlreadyHeld { pin });
    }
    let hold = Hold {
        reason: request.reason.clone(),
        held_by: request.actor.clone(),
        held_at: request.at,
    };
    Ok(HoldOutcome::Held {
        pin: set_hold(db, pin, hold)?,
    })
}

pub(crate) fn release(db: &mut dyn Sql, release: &Release) -> Result<ReleaseOutcome, StoreError> {
    let Some(mut pin) = current_pin(db, &release.template, &release.region)? else {
        return Ok(ReleaseOutcome::NotHeld);
    };
    let Some(hold) = pin.hold.take() else {
        return Ok(ReleaseOutcome::NotHeld);
    };
    db.execute(
        "UPDATE pins SET held_reason = NULL, held_by = NULL, held_at = NULL
         WHERE template_name = ?1 AND region = ?2",
        &[pin.template.as_str().into(), pin.region.as_str().into()],
    )?;
    record_hold_change(
        db,
        &pin,
        Action::Release,
        &hold.reason,
        &release.actor,
        release.at,
    )?;
    append_pin_event(
        db,
        &pin,
        EventType::PinReleased,
        release.at,
        data(&payload::PinReleased {
            image_digest: pin.digest.to_string(),
            revision: pin.revision,
            actor: release.actor.to_string(),
            reason: hold.reason.as_str().to_owned(),
            held_by: hold.held_by.to_string(),
        })?,
    )?;
    Ok(ReleaseOutcome::Released { pin, hold })
}

/// Appends an event about `pin` (its template and region) in the caller's
/// transaction.
fn append_pin_event(
    db: &mut dyn Sql,
    pin: &PinRecord,
    kind: EventType,
    at: OffsetDateTime,
    data: serde_json::Value,
) -> Result<i64, StoreError> {
    events::append(
        db,
        NewEvent {
            kind,
            at,
            template: Some(&pin.template),
            region: Some(&pin.region),
            data,
        },
    )
}

/// A hold or a release in the pin's history: the pin stays where it is
/// (`from_digest` and `to_digest` are its digest), the reason is the note.
fn record_hold_change(
    db: &mut dyn Sql,
    pin: &PinRecord,
    action: Action,
    reason: &HoldReason,
    actor: &TokenName,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO history (template_name, region, from_digest, to_digest, notes, actor, action, at)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7)",
        &[
            pin.template.as_str().into(),
            pin.region.as_str().into(),
            pin.digest.as_str().into(),
            reason.as_str().into(),
            actor.as_str().into(),
            action.as_str().into(),
            format_time(at)?.into(),
        ],
    )?;
    Ok(())
}

/// Holds `pin` (not held), records it in history and appends `pin.held`.
fn set_hold(db: &mut dyn Sql, mut pin: PinRecord, hold: Hold) -> Result<PinRecord, StoreError> {
    record_hold_change(
        db,
        &pin,
        Action::Hold,
        &hold.reason,
        &hold.held_by,
        hold.held_at,
    )?;
    db.execute(
        "UPDATE pins SET held_reason = ?3, held_by = ?4, held_at = ?5
         WHERE template_name = ?1 AND region = ?2",
        &[
            pin.template.as_str().into(),
            pin.region.as_str().into(),
            hold.reason.as_str().into(),
            hold.held_by.as_str().into(),
            format_time(hold.held_at)?.into(),
        ],
    )?;
    append_pin_event(
        db,
        &pin,
        EventType::PinHeld,
        hold.held_at,
        data(&payload::PinHeld {
            image_digest: pin.digest.to_string(),
            revision: pin.revision,
            actor: hold.held_by.to_string(),
            reason: hold.reason.as_str().to_owned(),
        })?,
    )?;
    pin.hold = Some(Box::new(hold));
    Ok(pin)
}

pub(crate) fn record_refusal(
    db: &mut dyn Sql,
    refusal: &Refusal,
    retain: usize,
) -> Result<(), StoreError> {
    let anonymous = refusal.actor.is_none();
    db.execute(
        "INSERT INTO audit (at, actor, template_name, region, action, status, code, source, count, anonymous)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[
            format_time(refusal.at)?.into(),
            refusal.actor.as_ref().map(TokenName::as_str).into(),
            refusal.template.as_ref().map(TemplateName::as_str).into(),
            refusal.region.as_ref().map(Region::as_str).into(),
            refusal.action.as_str().into(),
            i64::from(refusal.status).into(),
            refusal.code.as_str().into(),
            refusal.source.as_deref().into(),
            refusal.count.max(1).into(),
            anonymous.into(),
        ],
    )?;
    // Each class keeps its newest `retain` entries: the oldest beyond that
    // goes, and only of the class just written to.
    let keep = i64::try_from(retain.max(1)).unwrap_or(i64::MAX);
    db.execute(
        "DELETE FROM audit WHERE anonymous = ?1 AND id <= (
             SELECT id FROM audit WHERE anonymous = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        &[anonymous.into(), keep.into()],
    )?;
    Ok(())
}

pub(crate) fn put_runtime(
    db: &mut dyn Sql,
    runtime: &RuntimeRecord,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let before = db.query(
        "SELECT image, pinnable FROM runtimes WHERE name = ?1",
        &[runtime.name.as_str().into()],
    )?;
    let before: Option<(Option<Repository>, bool)> = before
        .first()
        .map(|row| {
            Ok::<_, StoreError>((
                row.get(0, "runtimes", "image")?,
                row.get(1, "runtimes", "pinnable")?,
            ))
        })
        .transpose()?;
    let existed = before.is_some();
    if before.as_ref() != Some(&(runtime.repository.clone(), runtime.pinnable)) {
        events::append(
            db,
            NewEvent {
                kind: EventType::RuntimeChanged,
                at,
                template: Some(&runtime.name),
                region: None,
                data: data(&payload::RuntimeChanged {
                    image: runtime.repository.as_ref().map(ToString::to_string),
                    pinnable: runtime.pinnable,
                    created: !existed,
                })?,
            },
        )?;
    }
    db.execute(
        "INSERT INTO runtimes (name, image, pinnable, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
           image = excluded.image, pinnable = excluded.pinnable, updated_at = excluded.updated_at",
        &[
            runtime.name.as_str().into(),
            runtime.repository.as_ref().map(Repository::as_str).into(),
            runtime.pinnable.into(),
            format_time(at)?.into(),
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
        "INSERT INTO tokens (name, scope, templates, secret_hash, created_at, created_by, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            token.name.as_str().into(),
            token.scope.as_str().into(),
            templates.clone().into(),
            Value::Blob(token.secret_hash.to_vec()),
            format_time(token.created_at)?.into(),
            token.created_by.as_ref().map(TokenName::as_str).into(),
            token.expires_at.map(format_time).transpose()?.into(),
        ],
    );
    match inserted {
        Ok(_) => {
            // Made over HTTP: in the change feed (never the secret).
            if let Some(actor) = &token.created_by {
                events::append(
                    db,
                    NewEvent {
                        kind: EventType::TokenCreated,
                        at: token.created_at,
                        template: None,
                        region: None,
                        data: data(&payload::TokenCreated {
                            name: token.name.to_string(),
                            scope: token.scope.as_str().to_owned(),
                            templates: token
                                .templates
                                .as_ref()
                                .map(|names| names.iter().map(ToString::to_string).collect()),
                            expires_at: token.expires_at.map(format_time).transpose()?,
                            actor: actor.to_string(),
                        })?,
                    },
                )?;
            }
            Ok(())
        }
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
        &[name.as_str().into(), format_time(at)?.into()],
    )?;
    Ok(changed > 0)
}

/// Stores a token unless an active one has the name: false then, and
/// nothing written (a refusal, not a failed statement, so the rest of a
/// group commit goes on).
pub(crate) fn create_token_if_free(db: &mut dyn Sql, token: &NewToken) -> Result<bool, StoreError> {
    let taken = db.query(
        "SELECT 1 FROM tokens WHERE name = ?1 AND revoked_at IS NULL",
        &[token.name.as_str().into()],
    )?;
    if !taken.is_empty() {
        return Ok(false);
    }
    create_token(db, token)?;
    Ok(true)
}

/// Revokes a token over HTTP: as [`revoke_token`], recorded in the change
/// feed.
pub(crate) fn revoke_token_by(
    db: &mut dyn Sql,
    name: &TokenName,
    actor: &TokenName,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let revoked = revoke_token(db, name, at)?;
    if revoked {
        events::append(
            db,
            NewEvent {
                kind: EventType::TokenRevoked,
                at,
                template: None,
                region: None,
                data: data(&payload::TokenRevoked {
                    name: name.to_string(),
                    actor: actor.to_string(),
                })?,
            },
        )?;
    }
    Ok(revoked)
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
    let mut params: Vec<Value> = vec![
        query.template.as_ref().map(TemplateName::as_str).into(),
        query.region.as_ref().map(Region::as_str).into(),
        query.before.into(),
        i64::try_from(query.limit).unwrap_or(i64::MAX).into(),
    ];
    let only = only_templates(query.templates.as_deref(), &mut params);
    let rows = db.query(
        &format!(
            "SELECT {} FROM history
             WHERE (CAST(?1 AS TEXT) IS NULL OR template_name = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR region = ?2)
               AND (CAST(?3 AS BIGINT) IS NULL OR revision < ?3){only}
             ORDER BY revision DESC LIMIT ?4",
            HISTORY.list()
        ),
        &params,
    )?;
    rows.iter()
        .map(|row| read_history(&mut HISTORY.reader(row, 0)))
        .collect()
}

pub(crate) fn audit(db: &mut dyn Sql, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    let mut params: Vec<Value> = vec![
        query.before.into(),
        i64::try_from(query.limit).unwrap_or(i64::MAX).into(),
    ];
    let only = only_templates(query.templates.as_deref(), &mut params);
    let rows = db.query(
        &format!(
            "SELECT {} FROM audit
             WHERE (CAST(?1 AS BIGINT) IS NULL OR id < ?1){only} ORDER BY id DESC LIMIT ?2",
            AUDIT.list()
        ),
        &params,
    )?;
    rows.iter()
        .map(|row| {
            let mut row = AUDIT.reader(row, 0);
            Ok(AuditEntry {
                id: row.next()?,
                refusal: Refusal {
                    at: row.next()?,
                    actor: row.next()?,
                    template: row.next()?,
                    region: row.next()?,
                    action: row.next()?,
                    status: row.next()?,
                    code: row.next()?,
                    source: row.next()?,
                    count: row.next()?,
                },
            })
        })
        .collect()
}

/// ` AND template_name IN (…)` for a template restriction (its names added
/// to `params`), or nothing. An empty restriction matches nothing.
pub(crate) fn only_templates(
    templates: Option<&[TemplateName]>,
    params: &mut Vec<Value>,
) -> String {
    let Some(templates) = templates else {
        return String::new();
    };
    if templates.is_empty() {
        return " AND 1 = 0".to_owned();
    }
    let placeholders: Vec<String> = templates
        .iter()
        .map(|template| {
            params.push(template.as_str().into());
            format!("?{}", params.len())
        })
        .collect();
    format!(" AND template_name IN ({})", placeholders.join(", "))
}

pub(crate) fn tokens(db: &mut dyn Sql) -> Result<Vec<TokenRecord>, StoreError> {
    query_tokens(db, false)
}

/// How a pin moves.
#[derive(Debug, Clone, Copy)]
enum Move {
    Promote,
    Rollback,
}

impl Move {
    fn action(self) -> Action {
        match self {
            Move::Promote => Action::Promote,
            Move::Rollback => Action::Rollback,
        }
    }
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
    action: Move,
    at: OffsetDateTime,
    ci: &'a CiProvenance,
    /// The sequence this change was sent with (kept in history).
    build_sequence: Option<i64>,
    /// The sequence the pin keeps: the newest it has seen.
    pin_build_sequence: Option<i64>,
    /// The template's repository, for the event's `image_ref`.
    repository: Option<&'a Repository>,
    /// A guard would have refused the change; `force` overrode it.
    forced: bool,
    /// The pin's hold, which a change keeps.
    hold: Option<Box<Hold>>,
    /// The soak the change was judged by.
    soak: Option<SoakFigures>,
    /// The pin's canary, which a change to its digest graduates, and a
    /// change to another digest ends unless `keep_canary`.
    canary: Option<Box<Canary>>,
    keep_canary: bool,
}

/// Appends the history entry, then points the pin at it. The caller owns the
/// transaction, so both or neither are written.
fn write_change(db: &mut dyn Sql, change: &Change<'_>) -> Result<PinRecord, StoreError> {
    let inserted = db.query(
        "INSERT INTO history (template_name, region, from_digest, to_digest, git_sha, notes, actor,
                              action, at, ci_run_url, repository, workflow, build_sequence, forced,
                              soak_source, soaked_ms, soak_required_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         RETURNING revision",
        &[
            change.template.as_str().into(),
            change.region.as_str().into(),
            change.from.map(Digest::as_str).into(),
            change.to.as_str().into(),
            change.git_sha.map(GitSha::as_str).into(),
            change.notes.map(Notes::as_str).into(),
            change.actor.as_str().into(),
            change.action.action().as_str().into(),
            format_time(change.at)?.into(),
            change.ci.run_url.as_ref().map(RunUrl::as_str).into(),
            change.ci.repository.as_ref().map(Label::as_str).into(),
            change.ci.workflow.as_ref().map(Label::as_str).into(),
            change.build_sequence.into(),
            change.forced.into(),
            change.soak.as_ref().map(|soak| soak.source.as_str()).into(),
            change.soak.as_ref().map(|soak| millis(soak.soaked)).into(),
            change
                .soak
                .as_ref()
                .map(|soak| millis(soak.required))
                .into(),
        ],
    )?;
    let revision: i64 = returned(&inserted, "history", "revision")?;
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
        hold: change.hold.clone(),
        canary: change.canary.clone(),
        ci_run_url: change.ci.run_url.clone(),
    };
    // The hold and canary columns are left as they are: a change keeps the
    // pin's hold, and its canary unless it moves to the canary's digest.
    db.execute(
        &format!(
            "INSERT INTO pins ({})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ?10)
             ON CONFLICT (template_name, region) DO UPDATE SET
               image_digest = excluded.image_digest, git_sha = excluded.git_sha,
               notes = excluded.notes, promoted_at = excluded.promoted_at,
               promoted_by = excluded.promoted_by, revision = excluded.revision,
               build_sequence = excluded.build_sequence, ci_run_url = excluded.ci_run_url",
            PINS.list()
        ),
        &[
            pin.template.as_str().into(),
            pin.region.as_str().into(),
            pin.digest.as_str().into(),
            pin.git_sha.as_ref().map(GitSha::as_str).into(),
            pin.notes.as_ref().map(Notes::as_str).into(),
            format_time(pin.promoted_at)?.into(),
            pin.promoted_by.as_str().into(),
            pin.revision.into(),
            pin.build_sequence.into(),
            pin.ci_run_url.as_ref().map(RunUrl::as_str).into(),
        ],
    )?;
    let kind = match change.action {
        Move::Promote => EventType::PinPromoted,
        Move::Rollback => EventType::PinRolledBack,
    };
    events::append(
        db,
        NewEvent {
            kind,
            at: change.at,
            template: Some(change.template),
            region: Some(change.region),
            data: data(&payload::PinMoved {
                from_digest: change.from.map(ToString::to_string),
                to_digest: change.to.to_string(),
                image_ref: change.repository.map(|repository| {
                    ImageRef::new(repository.clone(), change.to.clone()).to_string()
                }),
                revision: pin.revision,
                actor: change.actor.to_string(),
                git_sha: change.git_sha.map(|sha| sha.as_str().to_owned()),
                notes: change.notes.map(|notes| notes.as_str().to_owned()),
                ci_run_url: change
                    .ci
                    .run_url
                    .as_ref()
                    .map(|url| url.as_str().to_owned()),
                build_sequence: change.build_sequence,
                forced: change.forced,
            })?,
        },
    )?;
    let mut pin = pin;
    let Some(canary) = pin
        .canary
        .take_if(|canary| canary.digest == *change.to || !change.keep_canary)
    else {
        return Ok(pin);
    };
    clear_canary(db, &pin)?;
    if canary.digest == *change.to {
        // The pin now runs what its canary ran: the canary graduates.
        events::append(
            db,
            NewEvent {
                kind: EventType::CanaryPromoted,
                at: change.at,
                template: Some(change.template),
                region: Some(change.region),
                data: data(&payload::CanaryPromoted {
                    image_digest: canary.digest.to_string(),
                    percent: canary.percent.get(),
                    started_at: format_time(canary.started_at)?,
                    started_by: canary.started_by.to_string(),
                    revision: pin.revision,
                    actor: change.actor.to_string(),
                })?,
            },
        )?;
    } else {
        // The pin moved past its canary: what the ring pulled is no longer
        // the pin's next step, so it ends with the move.
        append_pin_event(
            db,
            &pin,
            EventType::CanaryAborted,
            change.at,
            canary_aborted(&canary, change.to, change.actor, "superseded", None, false)?,
        )?;
    }
    Ok(pin)
}

/// `canary.aborted`'s data: the canary that ended, the digest the pin
/// stands at, who ended it and why.
fn canary_aborted(
    canary: &Canary,
    stable: &Digest,
    actor: &TokenName,
    cause: &str,
    health: Option<payload::CanaryHealthFigures>,
    held: bool,
) -> Result<serde_json::Value, StoreError> {
    data(&payload::CanaryAborted {
        image_digest: canary.digest.to_string(),
        percent: canary.percent.get(),
        stable_digest: stable.to_string(),
        started_at: format_time(canary.started_at)?,
        started_by: canary.started_by.to_string(),
        actor: actor.to_string(),
        cause: cause.to_owned(),
        health,
        held,
    })
}

fn clear_canary(db: &mut dyn Sql, pin: &PinRecord) -> Result<(), StoreError> {
    db.execute(
        "UPDATE pins SET canary_digest = NULL, canary_percent = NULL, canary_started_at = NULL,
                         canary_started_by = NULL
         WHERE template_name = ?1 AND region = ?2",
        &[pin.template.as_str().into(), pin.region.as_str().into()],
    )
    .map(|_| ())
}

pub(crate) fn start_canary(
    db: &mut dyn Sql,
    request: &CanaryRequest,
) -> Result<CanaryOutcome, StoreError> {
    let current = current_pin(db, &request.template, &request.region)?;
    let state = current.as_ref().map(|pin| CanaryPin {
        digest: &pin.digest,
        held: pin.hold.is_some(),
        canary: pin
            .canary
            .as_ref()
            .map(|canary| (&canary.digest, canary.percent)),
    });
    let ask = CanaryAsk {
        digest: &request.digest,
        percent: request.percent,
        force: request.force,
        may_override_hold: request.may_override_hold,
    };
    let decision = decide_canary(state, ask);
    let Some(mut pin) = current else {
        return Ok(CanaryOutcome::NoPin);
    };
    let forced = match decision {
        CanaryDecision::Start { forced } => forced,
        CanaryDecision::NoPin => return Ok(CanaryOutcome::NoPin),
        CanaryDecision::Unchanged => return Ok(CanaryOutcome::Unchanged { pin }),
        CanaryDecision::Held => return Ok(CanaryOutcome::Held { pin }),
        CanaryDecision::IsStable => return Ok(CanaryOutcome::IsStable { pin }),
    };
    let canary = Canary {
        digest: request.digest.clone(),
        percent: request.percent,
        started_at: request.at,
        started_by: request.actor.clone(),
    };
    db.execute(
        "UPDATE pins SET canary_digest = ?3, canary_percent = ?4, canary_started_at = ?5,
                         canary_started_by = ?6
         WHERE template_name = ?1 AND region = ?2",
        &[
            pin.template.as_str().into(),
            pin.region.as_str().into(),
            canary.digest.as_str().into(),
            i64::from(canary.percent.get()).into(),
            format_time(canary.started_at)?.into(),
            canary.started_by.as_str().into(),
        ],
    )?;
    append_pin_event(
        db,
        &pin,
        EventType::CanaryStarted,
        request.at,
        data(&payload::CanaryStarted {
            image_digest: canary.digest.to_string(),
            percent: canary.percent.get(),
            stable_digest: pin.digest.to_string(),
            revision: pin.revision,
            actor: request.actor.to_string(),
            forced,
            replaced: pin.canary.as_ref().map(|old| payload::ReplacedCanary {
                image_digest: old.digest.to_string(),
                percent: old.percent.get(),
            }),
        })?,
    )?;
    let replaced = pin.canary.replace(Box::new(canary));
    Ok(CanaryOutcome::Started { pin, replaced })
}

pub(crate) fn abort_canary(
    db: &mut dyn Sql,
    abort: &CanaryAbort,
) -> Result<AbortOutcome, StoreError> {
    let Some(mut pin) = current_pin(db, &abort.template, &abort.region)? else {
        return Ok(AbortOutcome::NoCanary);
    };
    let Some(canary) = pin.canary.take_if(|canary| {
        abort
            .digest
            .as_ref()
            .is_none_or(|digest| *digest == canary.digest)
    }) else {
        return Ok(AbortOutcome::NoCanary);
    };
    clear_canary(db, &pin)?;
    let (cause, figures) = match &abort.cause {
        AbortCause::Requested => ("requested", None),
        AbortCause::Health(figures) => (
            "health",
            Some(payload::CanaryHealthFigures {
                canary_instances: figures.canary.instances,
                canary_unhealthy: figures.canary.unhealthy,
                canary_unhealthy_percent: figures.canary.unhealthy_percent(),
                stable_instances: figures.stable.instances,
                stable_unhealthy: figures.stable.unhealthy,
                stable_unhealthy_percent: figures.stable.unhealthy_percent(),
                excess_percent: figures.excess,
                max_unhealthy_percent: figures.rule.max_unhealthy,
                min_reports: figures.rule.min_reports,
            }),
        ),
    };
    append_pin_event(
        db,
        &pin,
        EventType::CanaryAborted,
        abort.at,
        canary_aborted(
            &canary,
            &pin.digest,
            &abort.actor,
            cause,
            figures,
            abort.hold.is_some() && pin.hold.is_none(),
        )?,
    )?;
    if let (Some(reason), None) = (&abort.hold, &pin.hold) {
        let hold = Hold {
            reason: reason.clone(),
            held_by: abort.actor.clone(),
            held_at: abort.at,
        };
        pin = set_hold(db, pin, hold)?;
    }
    Ok(AbortOutcome::Aborted { pin, canary })
}

/// The one value a `RETURNING` clause gave back.
pub(crate) fn returned<T: crate::sql::Decode>(
    rows: &[Row],
    table: &'static str,
    column: &'static str,
) -> Result<T, StoreError> {
    let row = rows.first().ok_or_else(|| StoreError::Corrupt {
        table,
        column,
        reason: "the insert returned no row".into(),
    })?;
    row.get(0, table, column)
}

fn current_pin(
    db: &mut dyn Sql,
    template: &TemplateName,
    region: &Region,
) -> Result<Option<PinRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM pins WHERE template_name = ?1 AND region = ?2",
            PINS.list()
        ),
        &[template.as_str().into(), region.as_str().into()],
    )?
    .first()
    .map(|row| read_pin(&mut PINS.reader(row, 0)))
    .transpose()
}

fn query_pins(db: &mut dyn Sql) -> Result<Vec<PinRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM pins ORDER BY template_name, region",
            PINS.list()
        ),
        &[],
    )?
    .iter()
    .map(|row| read_pin(&mut PINS.reader(row, 0)))
    .collect()
}

fn query_runtimes(db: &mut dyn Sql) -> Result<Vec<RuntimeRecord>, StoreError> {
    db.query(
        &format!("SELECT {} FROM runtimes ORDER BY name", RUNTIMES.list()),
        &[],
    )?
    .iter()
    .map(|row| {
        let mut row = RUNTIMES.reader(row, 0);
        Ok(RuntimeRecord {
            name: row.next()?,
            repository: row.next()?,
            pinnable: row.next()?,
        })
    })
    .collect()
}

fn query_tokens(db: &mut dyn Sql, active_only: bool) -> Result<Vec<TokenRecord>, StoreError> {
    let filter = if active_only {
        "WHERE revoked_at IS NULL"
    } else {
        ""
    };
    db.query(
        &format!("SELECT {} FROM tokens {filter} ORDER BY id", TOKENS.list()),
        &[],
    )?
    .iter()
    .map(|row| {
        let mut row = TOKENS.reader(row, 0);
        Ok(TokenRecord {
            name: row.next()?,
            scope: row.next()?,
            templates: row.next()?,
            secret_hash: row.next()?,
            created_at: row.next()?,
            revoked_at: row.next()?,
            created_by: row.next()?,
            expires_at: row.next()?,
        })
    })
    .collect()
}

/// A pin, from [`PINS`] in order.
fn read_pin(row: &mut Reader<'_>) -> Result<PinRecord, StoreError> {
    Ok(PinRecord {
        template: row.next()?,
        region: row.next()?,
        digest: row.next()?,
        git_sha: row.next()?,
        notes: row.next()?,
        promoted_at: row.next()?,
        promoted_by: row.next()?,
        revision: row.next()?,
        build_sequence: row.next()?,
        hold: {
            let reason: Option<HoldReason> = row.next()?;
            let held_by: Option<TokenName> = row.next()?;
            let held_at: Option<OffsetDateTime> = row.next()?;
            match (reason, held_by, held_at) {
                (Some(reason), Some(held_by), Some(held_at)) => Some(Box::new(Hold {
                    reason,
                    held_by,
                    held_at,
                })),
                _ => None,
            }
        },
        canary: {
            let digest: Option<Digest> = row.next()?;
            let percent: Option<i64> = row.next()?;
            let started_at: Option<OffsetDateTime> = row.next()?;
            let started_by: Option<TokenName> = row.next()?;
            match (digest, percent, started_at, started_by) {
                (Some(digest), Some(percent), Some(started_at), Some(started_by)) => {
                    let percent = Percent::new(percent).map_err(|err| StoreError::Corrupt {
                        table: "pins",
                        column: "canary_percent",
                        reason: err.to_string(),
                    })?;
                    Some(Box::new(Canary {
                        digest,
                        percent,
                        started_at,
                        started_by,
                    }))
                }
                _ => None,
            }
        },
        ci_run_url: row.next()?,
    })
}

/// A history entry, from [`HISTORY`] in order.
fn read_history(row: &mut Reader<'_>) -> Result<HistoryEntry, StoreError> {
    Ok(HistoryEntry {
        revision: row.next()?,
        template: row.next()?,
        region: row.next()?,
        from_digest: row.next()?,
        to_digest: row.next()?,
        git_sha: row.next()?,
        notes: row.next()?,
        actor: row.next()?,
        action: row.next()?,
        at: row.next()?,
        ci: CiProvenance {
            run_url: row.next()?,
            repository: row.next()?,
            workflow: row.next()?,
        },
        build_sequence: row.next()?,
        forced: row.next()?,
        soak: {
            let source: Option<Label> = row.next()?;
            let soaked: Option<i64> = row.next()?;
            let required: Option<i64> = row.next()?;
            match (source, soaked, required) {
                (Some(source), Some(soaked), Some(required)) => Some(SoakFigures {
                    source,
                    soaked: duration(soaked),
                    required: duration(required),
                }),
                _ => None,
            }
        },
    })
}

/// A duration as whole milliseconds, for a column.
fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds from a column as a duration (negative ones as zero).
fn duration(ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// RFC 3339 in UTC. Fails only for years outside 0..=9999, which no clock
/// produces; such a time is refused rather than stored as something else.
pub(crate) fn format_time(at: OffsetDateTime) -> Result<String, StoreError> {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|err| StoreError::Statement(format!("cannot store the time `{at}`: {err}")))
}
