//! The SQLite engine: schema, migrations, and every query.

use std::path::Path;
use std::time::Duration;

use pinion_core::{
    Digest, GitSha, Label, Notes, Region, Repository, RunUrl, Scope, TemplateName, TokenName,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{
    Action, AuditEntry, CiProvenance, DatabaseUrl, Expectation, HistoryEntry, HistoryQuery,
    NewToken, PinRecord, PromoteOutcome, Promotion, Refusal, Rollback, RollbackOutcome,
    RuntimeRecord, Snapshot, StoreError, TokenRecord, Write, Written,
};

/// Schema migrations, applied in order; `PRAGMA user_version` holds how many
/// have run. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE runtimes (
        name        TEXT PRIMARY KEY NOT NULL,
        image       TEXT,
        pinnable    INTEGER NOT NULL CHECK (pinnable IN (0, 1)),
        updated_at  TEXT NOT NULL
    ) STRICT;
    CREATE TABLE pins (
        template_name  TEXT NOT NULL,
        region         TEXT NOT NULL,
        image_digest   TEXT NOT NULL,
        git_sha        TEXT,
        notes          TEXT,
        promoted_at    TEXT NOT NULL,
        promoted_by    TEXT NOT NULL,
        revision       INTEGER NOT NULL,
        build_sequence INTEGER,
        PRIMARY KEY (template_name, region)
    ) STRICT;
    -- Append-only: rows are inserted in the transaction that changes a pin
    -- and never updated or deleted. AUTOINCREMENT: a revision is never reused.
    CREATE TABLE history (
        revision       INTEGER PRIMARY KEY AUTOINCREMENT,
        template_name  TEXT NOT NULL,
        region         TEXT NOT NULL,
        from_digest    TEXT,
        to_digest      TEXT NOT NULL,
        git_sha        TEXT,
        notes          TEXT,
        actor          TEXT NOT NULL,
        action         TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
        at             TEXT NOT NULL,
        ci_run_url     TEXT,
        repository     TEXT,
        workflow       TEXT,
        build_sequence INTEGER
    ) STRICT;
    CREATE INDEX history_pin ON history (template_name, region, revision);
    CREATE TRIGGER history_append_only_update BEFORE UPDATE ON history
        BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
    CREATE TRIGGER history_append_only_delete BEFORE DELETE ON history
        BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
    CREATE TABLE audit (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        at            TEXT NOT NULL,
        actor         TEXT,
        template_name TEXT,
        region        TEXT,
        action        TEXT NOT NULL,
        status        INTEGER NOT NULL,
        code          TEXT NOT NULL
    ) STRICT;
    CREATE TABLE tokens (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'promote', 'admin')),
        templates   TEXT,
        secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
        created_at  TEXT NOT NULL,
        revoked_at  TEXT
    ) STRICT;
    CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked_at IS NULL;
"#];

const PIN_COLUMNS: &str = "template_name, region, image_digest, git_sha, notes, promoted_at, promoted_by, revision, build_sequence";
const HISTORY_COLUMNS: &str = "revision, template_name, region, from_digest, to_digest, git_sha, notes, actor, action, at, ci_run_url, repository, workflow, build_sequence";

/// One connection to the database. Not `Sync`: the server keeps one for
/// writes and one for reads, each behind its own lock.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if absent) the database, sets it up for durable
    /// writes, and runs pending migrations.
    pub fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        match url {
            DatabaseUrl::Sqlite(path) => Self::open_sqlite(path),
        }
    }

    fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // Another process (`pinion token create`, a second server) may hold
        // the write lock briefly; wait for it rather than fail.
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL lets readers proceed during a write; FULL makes each commit
        // fsync the log before it returns, which is what a 2xx promises.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            warn_not_wal(&mode);
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if applied > known {
            return Err(StoreError::SchemaTooNew {
                found: applied,
                known,
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `work` in one `IMMEDIATE` transaction and commits (one fsync).
    fn immediate<T>(
        &mut self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = work(&tx)?;
        tx.commit()?;
        Ok(result)
    }

    /// Applies several writes in one transaction, so they share one fsync
    /// (group commit). Each write runs in its own savepoint: one that fails
    /// is rolled back alone and reported in its slot; the others commit. An
    /// `Err` from the whole call means nothing was committed.
    pub fn apply(
        &mut self,
        writes: &[Write],
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        self.immediate(|tx| {
            let mut results = Vec::with_capacity(writes.len());
            for write in writes {
                tx.execute_batch("SAVEPOINT write")?;
                let result = match write {
                    Write::Promote(promotion) => promote_in(tx, promotion).map(Written::Promote),
                    Write::Rollback(rollback) => rollback_in(tx, rollback).map(Written::Rollback),
                    Write::PutRuntime(runtime, at) => {
                        put_runtime_in(tx, runtime, *at).map(Written::PutRuntime)
                    }
                    Write::Refusal(refusal, retain) => {
                        record_refusal_in(tx, refusal, *retain).map(|()| Written::Refusal)
                    }
                };
                if result.is_err() {
                    tx.execute_batch("ROLLBACK TO write")?;
                }
                tx.execute_batch("RELEASE write")?;
                results.push(result);
            }
            Ok(results)
        })
    }

    /// Cheap liveness check of the database file.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM runtimes", [], |_| Ok(()))?;
        Ok(())
    }

    /// A number that changes whenever another connection commits. The server
    /// polls it to pick up offline changes (`pinion token create`, another
    /// replica) without rereading everything.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }

    /// Reads pins, catalog and active tokens in one consistent snapshot.
    pub fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        let tx = self.conn.transaction()?;
        let pins = query_pins(&tx)?;
        let runtimes = query_runtimes(&tx)?;
        let tokens = query_tokens(&tx, true)?;
        tx.commit()?;
        Ok(Snapshot {
            pins,
            runtimes,
            tokens,
        })
    }

    /// Moves a pin, or says why not. One `IMMEDIATE` transaction: the catalog
    /// check, the read of the current pin, the guards, the pin write and its
    /// history entry all see and leave one consistent state.
    pub fn promote(&mut self, promotion: &Promotion) -> Result<PromoteOutcome, StoreError> {
        self.immediate(|tx| promote_in(tx, promotion))
    }

    /// Moves a pin back to a digest it had before. Same transaction rules as
    /// [`Store::promote`].
    pub fn rollback(&mut self, rollback: &Rollback) -> Result<RollbackOutcome, StoreError> {
        self.immediate(|tx| rollback_in(tx, rollback))
    }

    /// History entries, newest first.
    pub fn history(&mut self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {HISTORY_COLUMNS} FROM history
             WHERE (?1 IS NULL OR template_name = ?1) AND (?2 IS NULL OR region = ?2)
               AND (?3 IS NULL OR revision < ?3)
             ORDER BY revision DESC LIMIT ?4"
        ))?;
        let rows = statement.query_map(
            params![
                query.template.as_ref().map(TemplateName::as_str),
                query.region.as_ref().map(Region::as_str),
                query.before,
                query.limit as i64,
            ],
            |row| Ok(read_history(row)),
        )?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(row??);
        }
        Ok(entries)
    }

    /// Records a refused write, keeping at most `retain` entries.
    pub fn record_refusal(&mut self, refusal: &Refusal, retain: usize) -> Result<(), StoreError> {
        self.immediate(|tx| record_refusal_in(tx, refusal, retain))
    }

    /// Audit entries (refused writes), newest first.
    pub fn audit(
        &mut self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, at, actor, template_name, region, action, status, code FROM audit
             WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(params![before, limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, u16>(6)?,
                row.get::<_, String>(7)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, at, actor, template, region, action, status, code) = row?;
            entries.push(AuditEntry {
                id,
                refusal: Refusal {
                    at: parse_time("audit", "at", &at)?,
                    actor: actor
                        .map(|name| parse("audit", "actor", TokenName::parse(&name)))
                        .transpose()?,
                    template: template
                        .map(|name| parse("audit", "template_name", TemplateName::parse(&name)))
                        .transpose()?,
                    region: region
                        .map(|name| parse("audit", "region", Region::parse(&name)))
                        .transpose()?,
                    action,
                    status,
                    code,
                },
            });
        }
        Ok(entries)
    }

    /// Adds or changes a catalog entry. Returns true when it was new.
    pub fn put_runtime(
        &mut self,
        runtime: &RuntimeRecord,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.immediate(|tx| put_runtime_in(tx, runtime, at))
    }

    /// Stores a new token. Fails if an active token has the same name.
    pub fn create_token(&mut self, token: &NewToken) -> Result<(), StoreError> {
        let templates = token.templates.as_ref().map(|names| {
            names
                .iter()
                .map(TemplateName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        });
        let result = self.conn.execute(
            "INSERT INTO tokens (name, scope, templates, secret_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token.name.as_str(),
                token.scope.as_str(),
                templates,
                &token.secret_hash[..],
                format_time(token.created_at),
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::TokenNameTaken(token.name.to_string()))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Every token ever created, revoked ones included, oldest first.
    pub fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        let tx = self.conn.transaction()?;
        let tokens = query_tokens(&tx, false)?;
        tx.commit()?;
        Ok(tokens)
    }

    /// Revokes the active token of that name. Returns false if there was none.
    pub fn revoke_token(
        &mut self,
        name: &TokenName,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![name.as_str(), format_time(at)],
        )?;
        Ok(changed > 0)
    }
}

/// SQLite refuses WAL on some file systems; durability still holds with the
/// rollback journal and `synchronous=FULL`, only concurrency suffers.
fn warn_not_wal(mode: &str) {
    eprintln!("warning: SQLite journal mode is `{mode}`, not `wal`; reads will wait for writes");
}

fn promote_in(tx: &Connection, promotion: &Promotion) -> Result<PromoteOutcome, StoreError> {
    let pinnable: Option<bool> = tx
        .query_row(
            "SELECT pinnable FROM runtimes WHERE name = ?1",
            [promotion.template.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    match pinnable {
        None => return Ok(PromoteOutcome::UnknownTemplate),
        Some(false) => return Ok(PromoteOutcome::NotPinnable),
        Some(true) => {}
    }
    let current = current_pin(tx, &promotion.template, &promotion.region)?;
    // Already there: nothing to write, whatever the guards would say, so
    // a retried promotion is idempotent.
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
    let pin = write_change(tx, &change)?;
    Ok(PromoteOutcome::Moved { pin, previous })
}

fn rollback_in(tx: &Connection, rollback: &Rollback) -> Result<RollbackOutcome, StoreError> {
    let Some(current) = current_pin(tx, &rollback.template, &rollback.region)? else {
        return Ok(RollbackOutcome::NoPin);
    };
    let target = match &rollback.to {
        Some(to) => {
            let known: bool = tx
                .query_row(
                    "SELECT 1 FROM history WHERE template_name = ?1 AND region = ?2 AND to_digest = ?3 LIMIT 1",
                    params![rollback.template.as_str(), rollback.region.as_str(), to.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !known {
                return Ok(RollbackOutcome::NotInHistory);
            }
            to.clone()
        }
        None => {
            let before: Option<Option<String>> = tx
                .query_row(
                    "SELECT from_digest FROM history WHERE template_name = ?1 AND region = ?2
                     ORDER BY revision DESC LIMIT 1",
                    params![rollback.template.as_str(), rollback.region.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            match before.flatten() {
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
    let pin = write_change(tx, &change)?;
    Ok(RollbackOutcome::Moved {
        pin,
        previous: current.digest,
    })
}

fn record_refusal_in(tx: &Connection, refusal: &Refusal, retain: usize) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (at, actor, template_name, region, action, status, code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            format_time(refusal.at),
            refusal.actor.as_ref().map(TokenName::as_str),
            refusal.template.as_ref().map(TemplateName::as_str),
            refusal.region.as_ref().map(Region::as_str),
            refusal.action,
            refusal.status,
            refusal.code,
        ],
    )?;
    let newest = tx.last_insert_rowid();
    tx.execute("DELETE FROM audit WHERE id <= ?1", [newest - retain as i64])?;
    Ok(())
}

fn put_runtime_in(
    tx: &Connection,
    runtime: &RuntimeRecord,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let existed: bool = tx
        .query_row(
            "SELECT 1 FROM runtimes WHERE name = ?1",
            [runtime.name.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    tx.execute(
        "INSERT INTO runtimes (name, image, pinnable, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
           image = excluded.image, pinnable = excluded.pinnable, updated_at = excluded.updated_at",
        params![
            runtime.name.as_str(),
            runtime.repository.as_ref().map(Repository::as_str),
            runtime.pinnable,
            format_time(at),
        ],
    )?;
    Ok(!existed)
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
fn write_change(tx: &Connection, change: &Change<'_>) -> Result<PinRecord, StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO history ({HISTORY_COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            change.template.as_str(),
            change.region.as_str(),
            change.from.map(Digest::as_str),
            change.to.as_str(),
            change.git_sha.map(GitSha::as_str),
            change.notes.map(Notes::as_str),
            change.actor.as_str(),
            change.action.as_str(),
            format_time(change.at),
            change.ci.run_url.as_ref().map(RunUrl::as_str),
            change.ci.repository.as_ref().map(Label::as_str),
            change.ci.workflow.as_ref().map(Label::as_str),
            change.build_sequence,
        ],
    )?;
    let pin = PinRecord {
        template: change.template.clone(),
        region: change.region.clone(),
        digest: change.to.clone(),
        git_sha: change.git_sha.cloned(),
        notes: change.notes.cloned(),
        promoted_at: change.at,
        promoted_by: change.actor.clone(),
        revision: tx.last_insert_rowid(),
        build_sequence: change.pin_build_sequence,
    };
    tx.execute(
        &format!(
            "INSERT INTO pins ({PIN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (template_name, region) DO UPDATE SET
               image_digest = excluded.image_digest, git_sha = excluded.git_sha,
               notes = excluded.notes, promoted_at = excluded.promoted_at,
               promoted_by = excluded.promoted_by, revision = excluded.revision,
               build_sequence = excluded.build_sequence"
        ),
        params![
            pin.template.as_str(),
            pin.region.as_str(),
            pin.digest.as_str(),
            pin.git_sha.as_ref().map(GitSha::as_str),
            pin.notes.as_ref().map(Notes::as_str),
            format_time(pin.promoted_at),
            pin.promoted_by.as_str(),
            pin.revision,
            pin.build_sequence,
        ],
    )?;
    Ok(pin)
}

fn current_pin(
    tx: &Connection,
    template: &TemplateName,
    region: &Region,
) -> Result<Option<PinRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {PIN_COLUMNS} FROM pins WHERE template_name = ?1 AND region = ?2"),
        params![template.as_str(), region.as_str()],
        |row| Ok(read_pin(row)),
    )
    .optional()?
    .transpose()
}

fn query_pins(conn: &Connection) -> Result<Vec<PinRecord>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {PIN_COLUMNS} FROM pins ORDER BY template_name, region"
    ))?;
    let rows = statement.query_map([], |row| Ok(read_pin(row)))?;
    let mut pins = Vec::new();
    for row in rows {
        pins.push(row??);
    }
    Ok(pins)
}

fn query_runtimes(conn: &Connection) -> Result<Vec<RuntimeRecord>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT name, image, pinnable FROM runtimes ORDER BY name")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Option<String>>(1)?,
            row.get::<_, bool>(2)?,
        ))
    })?;
    let mut runtimes = Vec::new();
    for row in rows {
        let (name, image, pinnable) = row?;
        runtimes.push(RuntimeRecord {
            name: parse("runtimes", "name", TemplateName::parse(&name))?,
            repository: image
                .map(|image| parse("runtimes", "image", Repository::parse(&image)))
                .transpose()?,
            pinnable,
        });
    }
    Ok(runtimes)
}

fn query_tokens(conn: &Connection, active_only: bool) -> Result<Vec<TokenRecord>, StoreError> {
    let sql = if active_only {
        "SELECT name, scope, templates, secret_hash, created_at, revoked_at FROM tokens
         WHERE revoked_at IS NULL ORDER BY id"
    } else {
        "SELECT name, scope, templates, secret_hash, created_at, revoked_at FROM tokens ORDER BY id"
    };
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, Vec<u8>>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut tokens = Vec::new();
    for row in rows {
        let (name, scope, templates, hash, created_at, revoked_at) = row?;
        let templates = match templates {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(|name| parse("tokens", "templates", TemplateName::parse(name)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let secret_hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt {
            table: "tokens",
            column: "secret_hash",
            reason: "not 32 bytes".into(),
        })?;
        tokens.push(TokenRecord {
            name: parse("tokens", "name", TokenName::parse(&name))?,
            scope: parse("tokens", "scope", Scope::parse(&scope))?,
            templates,
            secret_hash,
            created_at: parse_time("tokens", "created_at", &created_at)?,
            revoked_at: revoked_at
                .map(|at| parse_time("tokens", "revoked_at", &at))
                .transpose()?,
        });
    }
    Ok(tokens)
}

/// Reads a pin row; the outer `Result` is SQLite's, the inner one ours.
fn read_pin(row: &Row<'_>) -> Result<PinRecord, StoreError> {
    let text = |index: usize| row.get::<_, String>(index);
    let optional = |index: usize| row.get::<_, Option<String>>(index);
    Ok(PinRecord {
        template: parse("pins", "template_name", TemplateName::parse(&text(0)?))?,
        region: parse("pins", "region", Region::parse(&text(1)?))?,
        digest: parse("pins", "image_digest", Digest::parse(&text(2)?))?,
        git_sha: optional(3)?
            .map(|sha| parse("pins", "git_sha", GitSha::parse(&sha)))
            .transpose()?,
        notes: optional(4)?
            .map(|notes| parse("pins", "notes", Notes::parse(&notes)))
            .transpose()?,
        promoted_at: parse_time("pins", "promoted_at", &text(5)?)?,
        promoted_by: parse("pins", "promoted_by", TokenName::parse(&text(6)?))?,
        revision: row.get(7)?,
        build_sequence: row.get(8)?,
    })
}

/// Reads a history row; the outer `Result` is SQLite's, the inner one ours.
fn read_history(row: &Row<'_>) -> Result<HistoryEntry, StoreError> {
    let text = |index: usize| row.get::<_, String>(index);
    let optional = |index: usize| row.get::<_, Option<String>>(index);
    let label = |index: usize, column: &'static str| -> Result<Option<Label>, StoreError> {
        optional(index)?
            .map(|value| parse("history", column, Label::parse(&value)))
            .transpose()
    };
    let action = match text(8)?.as_str() {
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
        revision: row.get(0)?,
        template: parse("history", "template_name", TemplateName::parse(&text(1)?))?,
        region: parse("history", "region", Region::parse(&text(2)?))?,
        from_digest: optional(3)?
            .map(|digest| parse("history", "from_digest", Digest::parse(&digest)))
            .transpose()?,
        to_digest: parse("history", "to_digest", Digest::parse(&text(4)?))?,
        git_sha: optional(5)?
            .map(|sha| parse("history", "git_sha", GitSha::parse(&sha)))
            .transpose()?,
        notes: optional(6)?
            .map(|notes| parse("history", "notes", Notes::parse(&notes)))
            .transpose()?,
        actor: parse("history", "actor", TokenName::parse(&text(7)?))?,
        action,
        at: parse_time("history", "at", &text(9)?)?,
        ci: CiProvenance {
            run_url: optional(10)?
                .map(|url| parse("history", "ci_run_url", RunUrl::parse(&url)))
                .transpose()?,
            repository: label(11, "repository")?,
            workflow: label(12, "workflow")?,
        },
        build_sequence: row.get(13)?,
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
pub(crate) fn format_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}
