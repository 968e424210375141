//! Pinion's durable state: pins, history, audit, the template catalog and
//! API tokens.
//!
//! This is the only crate that knows SQL. Every query is written once
//! (`ops`) against a two-method interface (`sql::Sql`) that each engine
//! implements: SQLite, the embedded default, and PostgreSQL, for several
//! replicas on one database. The API is synchronous on purpose: a commit is
//! a blocking fsync, and the caller decides on which thread to pay for it.
//!
//! Durability: SQLite runs in WAL mode with `synchronous=FULL`, so every
//! committed transaction has been fsync'd before `commit` returns;
//! PostgreSQL's commit is durable under its default `synchronous_commit`.

mod ops;
mod postgres;
mod records;
mod sql;
mod sqlite;
mod url;

use pinion_core::TokenName;
use time::OffsetDateTime;

pub use records::{
    Action, AuditEntry, CiProvenance, Expectation, HistoryEntry, HistoryQuery, NewToken, PinRecord,
    PromoteOutcome, Promotion, Refusal, Rollback, RollbackOutcome, RuntimeRecord, Snapshot,
    TokenRecord, Write, Written,
};
pub use url::DatabaseUrl;

use crate::postgres::Postgres;
use crate::sql::Sql;
use crate::sqlite::Sqlite;

/// Why the store could not do what was asked. Expected refusals (an unknown
/// template, say) are not errors: they are [`PromoteOutcome`] values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite database could not be opened, read or written.
    #[error("database unavailable: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL server could not be reached, or refused the statement.
    #[error("database unavailable: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database is unavailable for another reason.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused a row (mapped to a specific error by the
    /// operation that hit it).
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// A row holds a value that no longer parses; someone edited the database
    /// by hand, or a migration is missing.
    #[error("database holds an invalid value in {table}.{column}: {reason}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        reason: String,
    },
    /// The database was written by a newer Pinion.
    #[error(
        "database schema version {found} is newer than this binary knows ({known}); upgrade pinion"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// An active token already has that name.
    #[error("an active token named `{0}` already exists; revoke it first")]
    TokenNameTaken(String),
    /// The URL names an engine this build does not have, or does not parse.
    #[error("{0}")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Whether the database itself is unreachable or failing (as opposed to
    /// holding bad data): callers answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(_) | StoreError::Postgres(_) | StoreError::Unavailable(_)
        )
    }
}

/// Follows other connections' commits as they happen, for engines that have
/// a change feed (PostgreSQL's `LISTEN`): blocks, calling `on_change` after
/// each batch of commits, until `keep_going` returns false (Ok) or the
/// connection fails (Err; call again to reconnect). SQLite has no feed:
/// returns `Ok(false)` at once, and the caller polls [`Store::data_version`].
/// `ignore` names writers (see [`Store::instance`]) whose notifications do
/// not count: a server's own writes are already in its view.
pub fn follow_changes(
    url: &DatabaseUrl,
    ignore: &[String],
    keep_going: &dyn Fn() -> bool,
    on_change: &mut dyn FnMut(),
) -> Result<bool, StoreError> {
    match url {
        DatabaseUrl::Sqlite(_) => Ok(false),
        DatabaseUrl::Postgres(url) => {
            postgres::listen(url, ignore, keep_going, on_change).map(|()| true)
        }
    }
}

/// One connection to the database, of either engine. Not `Sync`: the
/// server keeps one for writes and one for reads, each behind its own lock.
pub struct Store {
    engine: Engine,
}

enum Engine {
    Sqlite(Sqlite),
    /// Boxed: its connection configuration is several times larger.
    Postgres(Box<Postgres>),
}

impl Store {
    /// Connects (creating a SQLite file if absent) and runs pending
    /// migrations.
    pub fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let engine = match url {
            DatabaseUrl::Sqlite(path) => Engine::Sqlite(Sqlite::open(path)?),
            DatabaseUrl::Postgres(url) => Engine::Postgres(Box::new(Postgres::open(url)?)),
        };
        Ok(Store { engine })
    }

    /// The name this connection's writes carry in change notifications
    /// (PostgreSQL); `None` where the engine has no change feed.
    pub fn instance(&self) -> Option<String> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(engine) => Some(engine.instance().to_owned()),
        }
    }

    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.write(work),
            Engine::Postgres(engine) => engine.write(work),
        }
    }

    fn read<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.read(work),
            Engine::Postgres(engine) => engine.read(work),
        }
    }

    /// Cheap check that the database answers.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.ping(),
            Engine::Postgres(engine) => engine.ping(),
        }
    }

    /// A number that moves whenever another connection commits. The server
    /// polls it to pick up changes made elsewhere (`pinion token create`,
    /// other replicas) without rereading everything.
    pub fn data_version(&mut self) -> Result<i64, StoreError> {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.data_version(),
            Engine::Postgres(engine) => engine.data_version(),
        }
    }

    /// Pins, catalog and active tokens in one consistent snapshot.
    pub fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        self.read(ops::snapshot)
    }

    /// Applies several writes in one transaction, so they share one commit
    /// (group commit). Each write runs in its own savepoint: one that fails
    /// is rolled back alone and reported in its slot; the others commit. An
    /// `Err` from the whole call means nothing was committed.
    pub fn apply(
        &mut self,
        writes: &[Write],
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        self.write(|db| ops::apply_all(db, writes))
    }

    /// Moves a pin, or says why not, in one transaction: the catalog check,
    /// the read of the current pin, the guards, the pin write and its history
    /// entry all see and leave one consistent state.
    pub fn promote(&mut self, promotion: &Promotion) -> Result<PromoteOutcome, StoreError> {
        self.write(|db| ops::promote(db, promotion))
    }

    /// Moves a pin back to a digest it had before.
    pub fn rollback(&mut self, rollback: &Rollback) -> Result<RollbackOutcome, StoreError> {
        self.write(|db| ops::rollback(db, rollback))
    }

    /// Adds or changes a catalog entry. Returns true when it was new.
    pub fn put_runtime(
        &mut self,
        runtime: &RuntimeRecord,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.write(|db| ops::put_runtime(db, runtime, at))
    }

    /// Records a refused write, keeping at most `retain` entries.
    pub fn record_refusal(&mut self, refusal: &Refusal, retain: usize) -> Result<(), StoreError> {
        self.write(|db| ops::record_refusal(db, refusal, retain))
    }

    /// Stores a new token. Fails if an active token has the same name.
    pub fn create_token(&mut self, token: &NewToken) -> Result<(), StoreError> {
        self.write(|db| ops::create_token(db, token))
    }

    /// Revokes the active token of that name. Returns false if there was none.
    pub fn revoke_token(
        &mut self,
        name: &TokenName,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.write(|db| ops::revoke_token(db, name, at))
    }

    /// History entries, newest first.
    pub fn history(&mut self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read(|db| ops::history(db, query))
    }

    /// Audit entries (refused writes), newest first.
    pub fn audit(
        &mut self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|db| ops::audit(db, limit, before))
    }

    /// Every token ever created, revoked ones included, oldest first.
    pub fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(ops::tokens)
    }
}
