//! The PostgreSQL engine, for several stateless `pinion serve` replicas on a
//! database the platform already runs. Same queries as SQLite (`ops`), its
//! own schema, and:
//!
//! - every write transaction first bumps the one row of `pinion_meta`. That
//!   row lock serialises writers across replicas (history revisions are then
//!   assigned in commit order, and compare-and-swap sees the latest pin),
//!   and the counter is the change feed replicas poll;
//! - a connection that breaks (database restarted, network cut) is replaced
//!   on the next use, so the service recovers without a restart.

use std::error::Error;
use std::time::Duration;

use bytes::BytesMut;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, Statement};

use crate::pg_tls::Connection;
use std::collections::HashMap;

use crate::sql::{Row, Sql, Value};
use crate::{Finish, StoreError};

/// Schema migrations, applied in order under an advisory lock (replicas
/// starting together migrate once). Never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE pinion_meta (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        change_counter BIGINT NOT NULL
    );
    INSERT INTO pinion_meta (id, change_counter) VALUES (1, 0);
    CREATE TABLE runtimes (
        name        TEXT PRIMARY KEY,
        image       TEXT,
        pinnable    BIGINT NOT NULL CHECK (pinnable IN (0, 1)),
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE pins (
        template_name  TEXT NOT NULL,
        region         TEXT NOT NULL,
        image_digest   TEXT NOT NULL,
        git_sha        TEXT,
        notes          TEXT,
        promoted_at    TEXT NOT NULL,
        promoted_by    TEXT NOT NULL,
        revision       BIGINT NOT NULL,
        build_sequence BIGINT,
        PRIMARY KEY (template_name, region)
    );
    CREATE TABLE history (
        revision       BIGSERIAL PRIMARY KEY,
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
        build_sequence BIGINT
    );
    CREATE INDEX history_pin ON history (template_name, region, revision);
    CREATE FUNCTION pinion_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'history is append-only'; END $$;
    CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE ON history
        FOR EACH ROW EXECUTE FUNCTION pinion_history_append_only();
    CREATE TABLE audit (
        id            BIGSERIAL PRIMARY KEY,
        at            TEXT NOT NULL,
        actor         TEXT,
        template_name TEXT,
        region        TEXT,
        action        TEXT NOT NULL,
        status        BIGINT NOT NULL,
        code          TEXT NOT NULL
    );
    CREATE TABLE tokens (
        id          BIGSERIAL PRIMARY KEY,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'promote', 'admin')),
        templates   TEXT,
        secret_hash BYTEA NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
        created_at  TEXT NOT NULL,
        revoked_at  TEXT
    );
    CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked_at IS NULL;
"#,
    r#"
    ALTER TABLE audit ADD COLUMN source TEXT,
        ADD COLUMN count BIGINT NOT NULL DEFAULT 1,
        ADD COLUMN anonymous BIGINT NOT NULL DEFAULT 0;
    UPDATE audit SET anonymous = 1 WHERE actor IS NULL;
    CREATE INDEX audit_class ON audit (anonymous, id);
"#,
    // Event ids come from a sequence, drawn after the `pinion_meta` row lock
    // every announcing write takes first: ids are assigned in commit order,
    // so a reader that has seen id N never later sees a smaller one appear.
    r#"
    CREATE TABLE events (
        id            BIGSERIAL PRIMARY KEY,
        type          TEXT NOT NULL,
        at            TEXT NOT NULL,
        template_name TEXT,
        region        TEXT,
        data          TEXT NOT NULL
    );
    CREATE INDEX events_template ON events (template_name, id);
    CREATE TABLE event_log (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        pruned_through BIGINT NOT NULL
    );
    INSERT INTO event_log (id, pruned_through) VALUES (1, 0);
    CREATE TABLE webhooks (
        name            TEXT PRIMARY KEY,
        url             TEXT NOT NULL,
        events          TEXT,
        templates       TEXT,
        secret          BYTEA NOT NULL,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        disabled_at     TEXT,
        disabled_reason TEXT
    );
    CREATE TABLE deliveries (
        webhook         TEXT NOT NULL,
        event_id        BIGINT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        BIGINT NOT NULL,
        last_status     BIGINT,
        last_error      TEXT,
        next_attempt_ms BIGINT NOT NULL,
        delivered_ms    BIGINT,
        claimed_until   BIGINT,
        PRIMARY KEY (webhook, event_id)
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_attempt_ms);
    CREATE TABLE drift_state (
        template_name TEXT NOT NULL,
        region        TEXT NOT NULL,
        stale         BIGINT NOT NULL,
        tag_digest    TEXT,
        PRIMARY KEY (template_name, region)
    );
"#,
    r#"
    ALTER TABLE tokens DROP CONSTRAINT tokens_scope_check;
    ALTER TABLE tokens ADD CONSTRAINT tokens_scope_check
        CHECK (scope IN ('read', 'report', 'promote', 'admin'));
    CREATE TABLE instances (
        instance_id     TEXT PRIMARY KEY,
        template_name   TEXT NOT NULL,
        region          TEXT NOT NULL,
        image_digest    TEXT NOT NULL,
        healthy         BIGINT,
        ttl_seconds     BIGINT NOT NULL,
        first_seen_ms   BIGINT NOT NULL,
        last_seen_ms    BIGINT NOT NULL,
        digest_since_ms BIGINT NOT NULL,
        deleted         BIGINT NOT NULL DEFAULT 0,
        updated_ms      BIGINT NOT NULL
    );
    CREATE INDEX instances_updated ON instances (updated_ms);
    CREATE TABLE fleet_meta (id INTEGER PRIMARY KEY CHECK (id = 1), alive_ms BIGINT NOT NULL);
    INSERT INTO fleet_meta (id, alive_ms) VALUES (1, 0);
    CREATE TABLE fleet_state (
        template_name TEXT NOT NULL,
        region        TEXT NOT NULL,
        revision      BIGINT NOT NULL,
        state         TEXT NOT NULL,
        PRIMARY KEY (template_name, region)
    );
"#,
    r#"
    ALTER TABLE pins ADD COLUMN held_reason TEXT;
    ALTER TABLE pins ADD COLUMN held_by TEXT;
    ALTER TABLE pins ADD COLUMN held_at TEXT;
    ALTER TABLE history ADD COLUMN forced BIGINT NOT NULL DEFAULT 0 CHECK (forced IN (0, 1));
    ALTER TABLE history DROP CONSTRAINT history_action_check;
    ALTER TABLE history ADD CONSTRAINT history_action_check
        CHECK (action IN ('promote', 'rollback', 'hold', 'release'));
"#,
    r#"
    ALTER TABLE history ADD COLUMN soak_source TEXT;
    ALTER TABLE history ADD COLUMN soaked_ms BIGINT;
    ALTER TABLE history ADD COLUMN soak_required_ms BIGINT;
"#,
    r#"
    ALTER TABLE pins ADD COLUMN canary_digest TEXT;
    ALTER TABLE pins ADD COLUMN canary_percent BIGINT CHECK (canary_percent BETWEEN 1 AND 99);
    ALTER TABLE pins ADD COLUMN canary_started_at TEXT;
    ALTER TABLE pins ADD COLUMN canary_started_by TEXT;
"#,
    r#"
    ALTER TABLE tokens ADD COLUMN created_by TEXT;
    ALTER TABLE tokens ADD COLUMN expires_at TEXT;
"#,
    r#"
    CREATE TABLE ui_sessions (
        id_hash    BYTEA PRIMARY KEY CHECK (length(id_hash) = 32),
        token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_ms);
"#,
    r#"
    ALTER TABLE pins ADD COLUMN ci_run_url TEXT;
"#,
    r#"
    ALTER TABLE instances ADD COLUMN reported_by TEXT;
"#,
];

/// The advisory lock key migrations hold ("pinion" in ASCII).
const MIGRATION_LOCK: i64 = 0x7069_6e69_6f6e;

pub(crate) struct Postgres {
    connection: Connection,
    client: Option<Client>,
    /// Prepared statements of the current connection, by SQL text: a query
    /// then costs one round trip instead of two.
    statements: HashMap<String, Statement>,
    /// Names this connection's writes in `NOTIFY`, so a server can ignore
    /// the notifications of its own writes.
    instance: String,
    /// Writes this connection committed; each bumped the change counter by
    /// one, so `counter - own_writes` moves only when someone else writes.
    own_writes: i64,
}

impl Postgres {
    /// Connects and migrates; with `create` false, refuses a database that
    /// holds no Pinion schema yet rather than making one.
    pub fn open(url: &str, create: bool) -> Result<Postgres, StoreError> {
        let connection = Connection::parse(url)?;
        let mut store = Postgres {
            connection,
            client: None,
            statements: HashMap::new(),
            instance: instance_id(),
            own_writes: 0,
        };
        store.migrate(create)?;
        Ok(store)
    }

    /// The connection, (re)connecting if there is none or it broke.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.statements.clear();
            let client = self.connection.connect()?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }

    /// Forgets a connection after an error, so the next use reconnects.
    fn settle<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() && self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        result
    }

    fn migrate(&mut self, create: bool) -> Result<(), StoreError> {
        let client = self.client()?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        if !create {
            let exists: bool = tx
                .query_one("SELECT to_regclass('pinion_schema') IS NOT NULL", &[])?
                .get(0);
            if !exists {
                return Err(StoreError::Missing(
                    "the PostgreSQL database holds no Pinion schema".into(),
                ));
            }
        }
        tx.batch_execute("CREATE TABLE IF NOT EXISTS pinion_schema (version BIGINT NOT NULL)")?;
        let applied: i64 = tx
            .query_opt("SELECT version FROM pinion_schema", &[])?
            .map(|row| row.get(0))
            .unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if applied > known {
            return Err(StoreError::SchemaTooNew {
                found: applied,
                known,
            });
        }
        if applied == 0 {
            tracing::warn!(
                "the PostgreSQL database held no Pinion schema: creating a new, empty one"
            );
        }
        for migration in MIGRATIONS.iter().skip(applied as usize) {
            tx.batch_execute(migration)?;
        }
        tx.execute("DELETE FROM pinion_schema", &[])?;
        tx.execute("INSERT INTO pinion_schema (version) VALUES ($1)", &[&known])?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `work` in a write transaction, then commits or rolls back as
    /// `work` decides. An announced one is serialised with every other
    /// announced writer (the `pinion_meta` row lock) and bumps the change
    /// counter, with a notification; a quiet one does neither.
    pub fn transaction<T>(
        &mut self,
        announce: bool,
        work: impl FnOnce(&mut dyn Sql) -> Result<Finish<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let opening = format!(
            "UPDATE pinion_meta SET change_counter = change_counter + 1 WHERE id = 1; \
             NOTIFY pinion_changes, '{}'",
            self.instance
        );
        let result = (|| {
            self.client()?;
            let (Some(client), statements) = (self.client.as_mut(), &mut self.statements) else {
                return Err(StoreError::Unavailable("no connection".into()));
            };
            let mut tx = client.transaction()?;
            // Both in one round trip. The row lock serialises writers across
            // replicas; the notification is delivered to every listening
            // replica when (and only if) this commits.
            if announce {
                tx.batch_execute(&opening)?;
            }
            let finish = work(&mut Adapter {
                tx: &mut tx,
                statements,
            })?;
            match finish {
                Finish::Commit(result) => {
                    tx.commit()?;
                    Ok(Some(result))
                }
                Finish::RollBack => {
                    tx.rollback()?;
                    Ok(None)
                }
            }
        })();
        if announce && matches!(result, Ok(Some(_))) {
            self.own_writes += 1;
        }
        self.settle(result)
    }

    /// Runs `work` in one repeatable-read transaction: a consistent snapshot.
    pub fn read<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = (|| {
            self.client()?;
            let (Some(client), statements) = (self.client.as_mut(), &mut self.statements) else {
                return Err(StoreError::Unavailable("no connection".into()));
            };
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let result = work(&mut Adapter {
                tx: &mut tx,
                statements,
            })?;
            tx.commit()?;
            Ok(result)
        })();
        self.settle(result)
    }

    pub fn ping(&mut self) -> Result<(), StoreError> {
        let result = (|| {
            self.client()?.simple_query("SELECT 1")?;
            Ok(())
        })();
        self.settle(result)
    }

    /// The name this connection's writes carry in their notifications.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Moves when another connection (another replica, `pinion token`) commits.
    pub fn data_version(&mut self) -> Result<i64, StoreError> {
        let result = (|| {
            let counter: i64 = self
                .client()?
                .query_one("SELECT change_counter FROM pinion_meta WHERE id = 1", &[])?
                .get(0);
            Ok(counter - self.own_writes)
        })();
        self.settle(result)
    }
}

/// Blocks, calling `on_change` each time another connection commits a write
/// (`NOTIFY pinion_changes`), until the connection fails or `keep_going`
/// says stop. The caller reconnects after an error.
pub(crate) fn listen(
    url: &str,
    ignore: &[String],
    keep_going: &dyn Fn() -> bool,
    on_change: &mut dyn FnMut(),
) -> Result<(), StoreError> {
    let mut client = Connection::parse(url)?.connect()?;
    client.batch_execute("LISTEN pinion_changes")?;
    // Anything committed before LISTEN took effect is picked up by the
    // caller's periodic check; report once so it looks now.
    on_change();
    while keep_going() {
        let seen = {
            let foreign = |payload: &str| !ignore.iter().any(|own| own == payload);
            let mut notifications = client.notifications();
            let mut seen = notifications
                .timeout_iter(Duration::from_millis(500))
                .next()?
                .is_some_and(|notification| foreign(notification.payload()));
            // Fold whatever else already arrived into one reload.
            let mut pending = notifications.iter();
            while let Some(notification) = pending.next()? {
                seen |= foreign(notification.payload());
            }
            seen
        };
        if seen {
            on_change();
        }
        if client.is_closed() {
            return Err(StoreError::Unavailable(
                "the change feed connection closed".into(),
            ));
        }
    }
    Ok(())
}

struct Adapter<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    statements: &'a mut HashMap<String, Statement>,
}

impl Adapter<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(&dollar_placeholders(sql))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A random name for this connection's notifications.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// `?N` placeholders (SQLite's) as `$N` (PostgreSQL's).
fn dollar_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

impl Sql for Adapter<'_, '_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|value| value as &(dyn ToSql + Sync))
            .collect();
        let statement = self.statement(sql)?;
        match self.tx.execute(&statement, &params) {
            Ok(changed) => Ok(changed),
            Err(err) if err.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::Constraint(err.to_string()))
            }
            Err(err) => Err(err.into()),
        }
    }

    fn skip_locked(&self, table: &str) -> String {
        format!(" FOR UPDATE OF {table} SKIP LOCKED")
    }

    fn position_function(&self) -> &'static str {
        "strpos"
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|value| value as &(dyn ToSql + Sync))
            .collect();
        let statement = self.statement(sql)?;
        let rows = self.tx.query(&statement, &params)?;
        rows.iter()
            .map(|row| {
                let mut values = Vec::with_capacity(row.len());
                for (index, column) in row.columns().iter().enumerate() {
                    let value = match *column.type_() {
                        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
                        Type::INT4 => row
                            .try_get::<_, Option<i32>>(index)?
                            .map(|n| Value::Int(n.into())),
                        Type::INT2 => row
                            .try_get::<_, Option<i16>>(index)?
                            .map(|n| Value::Int(n.into())),
                        Type::BOOL => row
                            .try_get::<_, Option<bool>>(index)?
                            .map(|b| Value::Int(b.into())),
                        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob),
                        _ => row.try_get::<_, Option<String>>(index)?.map(Value::Text),
                    };
                    values.push(value.unwrap_or(Value::Null));
                }
                Ok(Row(values))
            })
            .collect()
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(number) => match *ty {
                Type::INT4 => i32::try_from(*number)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*number)?.to_sql(ty, out),
                Type::BOOL => (*number != 0).to_sql(ty, out),
                _ => number.to_sql(ty, out),
            },
            Value::Text(text) => text.to_sql(ty, out),
            Value::Blob(bytes) => bytes.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
