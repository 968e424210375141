//! The SQLite engine: the embedded default. Connection set-up, schema
//! migrations, transactions, and the [`Sql`] adapter; the queries themselves
//! are in `ops`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::sql::{Row, Sql, Value};
use crate::{Finish, StoreError};

/// Schema migrations, applied in order; `PRAGMA user_version` holds how many
/// have run. Never edit one that has shipped: append a new one.
/// How many prepared statements a connection keeps: more than the store
/// has distinct statements.
const STATEMENT_CACHE: usize = 256;

const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // Audit entries without a valid token are a class of their own, with its
    // own retention; they are counted per source rather than kept one by one.
    r#"
    ALTER TABLE audit ADD COLUMN source TEXT;
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN anonymous INTEGER NOT NULL DEFAULT 0;
    UPDATE audit SET anonymous = 1 WHERE actor IS NULL;
    CREATE INDEX audit_class ON audit (anonymous, id);
"#,
    // The change feed and its webhook outbox. Event times are fixed-width
    // RFC 3339 (so they sort as text); delivery times are Unix milliseconds.
    r#"
    CREATE TABLE events (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        type          TEXT NOT NULL,
        at            TEXT NOT NULL,
        template_name TEXT,
        region        TEXT,
        data          TEXT NOT NULL
    ) STRICT;
    -- No index by template: one would take a leaf page per template in
    -- every group commit (a quarter of a promotion's cost); a filtered
    -- read walks the ids after its cursor instead.
    CREATE TABLE event_log (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        pruned_through INTEGER NOT NULL
    ) STRICT;
    INSERT INTO event_log (id, pruned_through) VALUES (1, 0);
    CREATE TABLE webhooks (
        name            TEXT PRIMARY KEY NOT NULL,
        url             TEXT NOT NULL,
        events          TEXT,
        templates       TEXT,
        secret          BLOB NOT NULL,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        disabled_at     TEXT,
        disabled_reason TEXT
    ) STRICT;
    CREATE TABLE deliveries (
        webhook         TEXT NOT NULL,
        event_id        INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL,
        last_status     INTEGER,
        last_error      TEXT,
        next_attempt_ms INTEGER NOT NULL,
        delivered_ms    INTEGER,
        claimed_until   INTEGER,
        PRIMARY KEY (webhook, event_id)
    ) STRICT;
    CREATE INDEX deliveries_due ON deliveries (state, next_attempt_ms);
    CREATE TABLE drift_state (
        template_name TEXT NOT NULL,
        region        TEXT NOT NULL,
        stale         INTEGER NOT NULL,
        tag_digest    TEXT,
        PRIMARY KEY (template_name, region)
    ) STRICT;
"#,
    // Fleet reports, and the `report` scope (a CHECK constraint SQLite can
    // only change by making the table again). Fleet times are Unix
    // milliseconds.
    r#"
    CREATE TABLE tokens_new (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'report', 'promote', 'admin')),
        templates   TEXT,
        secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
        created_at  TEXT NOT NULL,
        revoked_at  TEXT
    ) STRICT;
    INSERT INTO tokens_new (id, name, scope, templates, secret_hash, created_at, revoked_at)
        SELECT id, name, scope, templates, secret_hash, created_at, revoked_at FROM tokens;
    DROP TABLE tokens;
    ALTER TABLE tokens_new RENAME TO tokens;
    CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked_at IS NULL;
    CREATE TABLE instances (
        instance_id     TEXT PRIMARY KEY NOT NULL,
        template_name   TEXT NOT NULL,
        region          TEXT NOT NULL,
        image_digest    TEXT NOT NULL,
        healthy         INTEGER,
        ttl_seconds     INTEGER NOT NULL,
        first_seen_ms   INTEGER NOT NULL,
        last_seen_ms    INTEGER NOT NULL,
        digest_since_ms INTEGER NOT NULL,
        deleted         INTEGER NOT NULL DEFAULT 0,
        updated_ms      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX instances_updated ON instances (updated_ms);
    CREATE TABLE fleet_meta (id INTEGER PRIMARY KEY CHECK (id = 1), alive_ms INTEGER NOT NULL) STRICT;
    INSERT INTO fleet_meta (id, alive_ms) VALUES (1, 0);
    CREATE TABLE fleet_state (
        template_name TEXT NOT NULL,
        region        TEXT NOT NULL,
        revision      INTEGER NOT NULL,
        state         TEXT NOT NULL,
        PRIMARY KEY (template_name, region)
    ) STRICT;
"#,
    // Holds on pins; history records holds and releases, and whether an
    // entry overrode a guard (the action's CHECK changes: SQLite makes the
    // table again, revisions and their sequence kept).
    r#"
    ALTER TABLE pins ADD COLUMN held_reason TEXT;
    ALTER TABLE pins ADD COLUMN held_by TEXT;
    ALTER TABLE pins ADD COLUMN held_at TEXT;
    DROP TRIGGER history_append_only_update;
    DROP TRIGGER history_append_only_delete;
    CREATE TABLE history_new (
        revision       INTEGER PRIMARY KEY AUTOINCREMENT,
        template_name  TEXT NOT NULL,
        region         TEXT NOT NULL,
        from_digest    TEXT,
        to_digest      TEXT NOT NULL,
        git_sha        TEXT,
        notes          TEXT,
        actor          TEXT NOT NULL,
        action         TEXT NOT NULL CHECK (action IN ('promote', 'rollback', 'hold', 'release')),
        at             TEXT NOT NULL,
        ci_run_url     TEXT,
        repository     TEXT,
        workflow       TEXT,
        build_sequence INTEGER,
        forced         INTEGER NOT NULL DEFAULT 0 CHECK (forced IN (0, 1))
    ) STRICT;
    INSERT INTO history_new (revision, template_name, region, from_digest, to_digest, git_sha,
                             notes, actor, action, at, ci_run_url, repository, workflow,
                             build_sequence)
        SELECT revision, template_name, region, from_digest, to_digest, git_sha, notes, actor,
               action, at, ci_run_url, repository, workflow, build_sequence
        FROM history;
    DELETE FROM sqlite_sequence WHERE name = 'history_new';
    UPDATE sqlite_sequence SET name = 'history_new' WHERE name = 'history';
    DROP TABLE history;
    ALTER TABLE history_new RENAME TO history;
    CREATE INDEX history_pin ON history (template_name, region, revision);
    CREATE TRIGGER history_append_only_update BEFORE UPDATE ON history
        BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
    CREATE TRIGGER history_append_only_delete BEFORE DELETE ON history
        BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
"#,
    // The soak a promotion was judged by, when the server has a soak source.
    r#"
    ALTER TABLE history ADD COLUMN soak_source TEXT;
    ALTER TABLE history ADD COLUMN soaked_ms INTEGER;
    ALTER TABLE history ADD COLUMN soak_required_ms INTEGER;
"#,
    // Canaries on pins.
    r#"
    ALTER TABLE pins ADD COLUMN canary_digest TEXT;
    ALTER TABLE pins ADD COLUMN canary_percent INTEGER CHECK (canary_percent BETWEEN 1 AND 99);
    ALTER TABLE pins ADD COLUMN canary_started_at TEXT;
    ALTER TABLE pins ADD COLUMN canary_started_by TEXT;
"#,
    // Tokens made over HTTP: who made them, and when they stop working.
    r#"
    ALTER TABLE tokens ADD COLUMN created_by TEXT;
    ALTER TABLE tokens ADD COLUMN expires_at TEXT;
"#,
    // Page sessions: only the SHA-256 of the session id, and of the token
    // it was made from (the session dies with the token).
    r#"
    CREATE TABLE ui_sessions (
        id_hash    BLOB PRIMARY KEY CHECK (length(id_hash) = 32),
        token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_ms);
"#,
    // The CI run of the change that put the pin where it is.
    r#"
    ALTER TABLE pins ADD COLUMN ci_run_url TEXT;
"#,
    // The token that last reported an instance (the fleet's per-token cap).
    r#"
    ALTER TABLE instances ADD COLUMN reported_by TEXT;
"#,
];

/// One SQLite connection.
pub(crate) struct Sqlite {
    conn: Connection,
    path: PathBuf,
    /// The device and inode of the file this connection opened. A file
    /// deleted or replaced under a running server is still open here, and a
    /// write to it would "succeed" into a file nobody will ever read again:
    /// every commit first checks that the path still names this file.
    identity: (u64, u64),
}

impl Sqlite {
    /// Opens (creating if absent, when `create`) the database, sets it up
    /// for durable writes, and runs pending migrations.
    pub fn open(path: &Path, create: bool) -> Result<Sqlite, StoreError> {
        let flags = if create {
            OpenFlags::default()
        } else {
            OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE
        };
        let conn = Connection::open_with_flags(path, flags).map_err(|err| {
            if !create && !path.exists() {
                StoreError::Missing(format!("no database at `{}`", path.display()))
            } else {
                err.into()
            }
        })?;
        // Another process (`pinion token create`, a second server) may hold
        // the write lock briefly; wait for it rather than fail.
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL lets readers proceed during a write; FULL makes each commit
        // fsync the log before it returns, which is what a 2xx promises.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                %mode,
                "SQLite journal mode is not `wal`; reads will wait for writes"
            );
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        // Every statement the store runs stays prepared: rusqlite keeps 16 by
        // default, fewer than one promotion's group commit uses (the pin,
        // its history, its event, the outbox, the savepoints), and a cache
        // that thrashes parses every statement of every write again.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let identity = file_identity(path)?;
        let mut store = Sqlite {
            conn,
            path: path.to_owned(),
            identity,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Fails unless the path still names the file this connection opened.
    pub fn check_identity(&self) -> Result<(), StoreError> {
        still_the_file(&self.path, self.identity)
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

    /// Runs `work` in one `IMMEDIATE` transaction (SQLite's single writer
    /// serialises these) and commits, one fsync, or rolls back, as `work`
    /// decides. Before committing, checks that the file is still the one
    /// opened (see [`Sqlite::identity`](Sqlite)).
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<Finish<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let Sqlite {
            conn,
            path,
            identity,
        } = self;
        // Checked before (a replaced file's statements fail in odd ways)
        // and again just before the commit.
        still_the_file(path, *identity)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match work(&mut Adapter(&tx))? {
            Finish::Commit(result) => {
                still_the_file(path, *identity)?;
                tx.commit()?;
                Ok(Some(result))
            }
            Finish::RollBack => {
                tx.rollback()?;
                Ok(None)
            }
        }
    }

    /// Runs `work` in one read transaction, so what it reads is consistent.
    pub fn read<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.transaction()?;
        let result = work(&mut Adapter(&tx))?;
        tx.commit()?;
        Ok(result)
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.check_identity()?;
        self.conn
            .query_row("SELECT count(*) FROM runtimes", [], |_| Ok(()))?;
        Ok(())
    }

    /// Changes whenever another connection commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

/// Fails unless `path` still names the file of `identity`.
fn still_the_file(path: &Path, identity: (u64, u64)) -> Result<(), StoreError> {
    match file_identity(path) {
        Ok(now) if now == identity => Ok(()),
        _ => Err(StoreError::Unavailable(format!(
            "the database file `{}` was removed or replaced while open; nothing more is \
             written to it: restore the file, or restart the server on the right one",
            path.display()
        ))),
    }
}

/// The device and inode the path names now.
fn file_identity(path: &Path) -> Result<(u64, u64), StoreError> {
    let metadata = std::fs::metadata(path).map_err(|err| {
        StoreError::Unavailable(format!("cannot read `{}`: {err}", path.display()))
    })?;
    Ok((metadata.dev(), metadata.ino()))
}

struct Adapter<'a>(&'a Connection);

impl Sql for Adapter<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut statement = self.0.prepare_cached(sql)?;
        match statement.execute(rusqlite::params_from_iter(params.iter())) {
            Ok(changed) => Ok(changed as u64),
            Err(rusqlite::Error::SqliteFailure(failure, message))
                if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Constraint(message.unwrap_or_default()))
            }
            Err(other) => Err(other.into()),
        }
    }

    fn skip_locked(&self, _table: &str) -> String {
        String::new()
    }

    fn position_function(&self) -> &'static str {
        "instr"
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params.iter()))?;
        let mut result = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(match row.get_ref(index)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(number) => Value::Int(number),
                    ValueRef::Real(number) => Value::Int(number as i64),
                    ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
                    ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
                });
            }
            result.push(Row(values));
        }
        Ok(result)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(number) => ToSqlOutput::Borrowed(ValueRef::Integer(*number)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Value::Blob(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made by migrations 1 to 4 (before holds), with history,
    /// taken through migration 5, which makes the history table again.
    #[test]
    fn the_history_rebuild_keeps_every_revision_its_sequence_and_its_guards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for migration in &MIGRATIONS[..4] {
                tx.execute_batch(migration).unwrap();
            }
            tx.pragma_update(None, "user_version", 4).unwrap();
            for n in 1..=3 {
                tx.execute(
                    "INSERT INTO history (template_name, region, to_digest, actor, action, at)
                     VALUES ('codex', 'global', ?1, 'ci', 'promote', '2026-12-01T00:00:00Z')",
                    [format!("sha256:{n:064x}")],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Sqlite::open(&path, true).unwrap();
        let conn = &store.conn;
        let revisions: Vec<i64> = conn
            .prepare("SELECT revision FROM history ORDER BY revision")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(revisions, [1, 2, 3]);
        let sequence: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'history'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(sequence, 3);
        conn.execute(
            "INSERT INTO history (template_name, region, to_digest, actor, action, at)
             VALUES ('codex', 'global', 'sha256:00', 'ci', 'hold', '2026-12-01T00:00:00Z')",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 4, "no revision is reused");
        assert!(
            conn.execute("UPDATE history SET actor = 'x'", []).is_err(),
            "still append-only"
        );
        assert!(conn.execute("DELETE FROM history", []).is_err());
        assert!(
            conn.execute(
                "INSERT INTO history (template_name, region, to_digest, actor, action, at)
                 VALUES ('codex', 'global', 'sha256:00', 'ci', 'other', 'x')",
                [],
            )
            .is_err(),
            "actions are still checked"
        );
        let indexed: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'history_pin'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1);
    }
}
