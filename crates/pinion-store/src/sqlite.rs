//! The SQLite engine: the embedded default. Connection set-up, schema
//! migrations, transactions, and the [`Sql`] adapter; the queries themselves
//! are in `ops`.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;
use crate::sql::{Row, Sql, Value};

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

/// One SQLite connection.
pub(crate) struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating if absent) the database, sets it up for durable
    /// writes, and runs pending migrations.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let conn = Connection::open(path)?;
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
        let mut store = Sqlite { conn };
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

    /// Runs `work` in one `IMMEDIATE` transaction (SQLite's single writer
    /// serialises these) and commits: one fsync.
    pub fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = work(&mut Adapter(&tx))?;
        tx.commit()?;
        Ok(result)
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
