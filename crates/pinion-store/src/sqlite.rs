//! The SQLite engine: schema, migrations, and every query.

use std::path::Path;
use std::time::Duration;

use pinion_core::{Digest, GitSha, Notes, Region, Repository, Scope, TemplateName, TokenName};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{
    DatabaseUrl, NewToken, PinRecord, PromoteOutcome, Promotion, RuntimeRecord, Snapshot,
    StoreError, TokenRecord,
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
        template_name TEXT NOT NULL,
        region        TEXT NOT NULL,
        image_digest  TEXT NOT NULL,
        git_sha       TEXT,
        notes         TEXT,
        promoted_at   TEXT NOT NULL,
        promoted_by   TEXT NOT NULL,
        PRIMARY KEY (template_name, region)
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
    /// check, the read of the current pin and the write see the same state.
    pub fn promote(&mut self, promotion: &Promotion) -> Result<PromoteOutcome, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        let current = tx
            .query_row(
                "SELECT template_name, region, image_digest, git_sha, notes, promoted_at, promoted_by
                 FROM pins WHERE template_name = ?1 AND region = ?2",
                params![promotion.template.as_str(), promotion.region.as_str()],
                |row| Ok(read_pin(row)),
            )
            .optional()?
            .transpose()?;
        if let Some(pin) = current
            .as_ref()
            .filter(|pin| pin.digest == promotion.digest)
        {
            return Ok(PromoteOutcome::Unchanged { pin: pin.clone() });
        }
        let pin = PinRecord {
            template: promotion.template.clone(),
            region: promotion.region.clone(),
            digest: promotion.digest.clone(),
            git_sha: promotion.git_sha.clone(),
            notes: promotion.notes.clone(),
            promoted_at: promotion.at,
            promoted_by: promotion.actor.clone(),
        };
        tx.execute(
            "INSERT INTO pins (template_name, region, image_digest, git_sha, notes, promoted_at, promoted_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (template_name, region) DO UPDATE SET
               image_digest = excluded.image_digest, git_sha = excluded.git_sha,
               notes = excluded.notes, promoted_at = excluded.promoted_at,
               promoted_by = excluded.promoted_by",
            params![
                pin.template.as_str(),
                pin.region.as_str(),
                pin.digest.as_str(),
                pin.git_sha.as_ref().map(GitSha::as_str),
                pin.notes.as_ref().map(Notes::as_str),
                format_time(pin.promoted_at),
                pin.promoted_by.as_str(),
            ],
        )?;
        tx.commit()?;
        Ok(PromoteOutcome::Moved {
            pin,
            previous: current.map(|pin| pin.digest),
        })
    }

    /// Adds or changes a catalog entry. Returns true when it was new.
    pub fn put_runtime(
        &mut self,
        runtime: &RuntimeRecord,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        tx.commit()?;
        Ok(!existed)
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

fn query_pins(conn: &Connection) -> Result<Vec<PinRecord>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT template_name, region, image_digest, git_sha, notes, promoted_at, promoted_by
         FROM pins ORDER BY template_name, region",
    )?;
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
