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

pub use pinion_core::Expectation;
pub use records::{
    Action, AuditEntry, AuditQuery, CiProvenance, HistoryEntry, HistoryQuery, NewToken, PinRecord,
    PromoteOutcome, Promotion, Refusal, Rollback, RollbackOutcome, RuntimeRecord, Snapshot,
    TokenRecord,
};
pub use url::DatabaseUrl;

use crate::postgres::Postgres;
use crate::sql::Sql;
use crate::sqlite::Sqlite;

/// Why the store could not do what was asked. Expected refusals (an unknown
/// template, say) are not errors: they are [`PromoteOutcome`] values.
///
/// Split by what the caller can do about it: [`StoreError::Unavailable`] is
/// the database being unreachable or failing at the IO level (retry later);
/// every other kind is a bug or a database that is not as Pinion left it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, or failed underneath: a lost
    /// connection, an IO error, a full disk, a lock held too long.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed for a reason a retry will not fix (a bug, or a
    /// schema that is not Pinion's).
    #[error("database statement failed: {0}")]
    Statement(String),
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
    /// There is no database to open, and making one was not asked for: no
    /// SQLite file at that path, or no Pinion schema in that PostgreSQL
    /// database.
    #[error("{0}")]
    Missing(String),
}

impl StoreError {
    /// Whether the database itself is unreachable or failing (as opposed to
    /// a bug or bad data): callers answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// SQLite's failures underneath a statement (locks, IO, space, a file that
/// is gone or not a database) are the database being unavailable; the rest
/// (syntax, constraints, misuse) are statement failures.
impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode as C;
        let unavailable = match &err {
            rusqlite::Error::SqliteFailure(failure, _) => matches!(
                failure.code,
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::SystemIoFailure
                    | C::DiskFull
                    | C::CannotOpen
                    | C::ReadOnly
                    | C::OutOfMemory
                    | C::OperationInterrupted
                    | C::DatabaseCorrupt
                    | C::NotADatabase
                    | C::FileLockingProtocolFailed
                    | C::PermissionDenied
            ),
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::Statement(err.to_string())
        }
    }
}

/// PostgreSQL: no connection, a closed one, or a server-side error of the
/// classes that mean "not now" (connection exceptions, insufficient
/// resources, operator intervention such as a shutdown, system errors,
/// serialisation failures) are the database being unavailable; any other
/// SQLSTATE, and values that do not convert, are statement failures.
impl From<::postgres::Error> for StoreError {
    fn from(err: ::postgres::Error) -> StoreError {
        let text = err.to_string();
        let unavailable = err.is_closed()
            || match err.code() {
                Some(state) => matches!(
                    state.code().get(..2),
                    Some("08" | "40" | "53" | "57" | "58")
                ),
                None => {
                    !(text.starts_with("error serializing")
                        || text.starts_with("error deserializing"))
                }
            };
        if unavailable {
            StoreError::Unavailable(text)
        } else {
            StoreError::Statement(text)
        }
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

/// How a transaction of [`Store::batch`] ends.
#[derive(Debug)]
pub enum Finish<T> {
    /// Commit, and hand `T` back.
    Commit(T),
    /// Roll everything back.
    RollBack,
}

/// Writes inside one transaction of [`Store::batch`].
pub struct Batch<'t> {
    db: &'t mut dyn Sql,
    savepoints: bool,
    /// What ended the transaction: a failed savepoint statement, or the
    /// failure of a batch's only write. Nothing is committed then.
    failed: Option<StoreError>,
}

impl Batch<'_> {
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if !self.savepoints {
            let result = op(self.db);
            if let Err(err) = &result {
                self.failed = Some(err.clone());
            }
            return result;
        }
        let opened = self.db.execute("SAVEPOINT pinion_write", &[]);
        if let Err(err) = opened {
            self.failed = Some(err.clone());
            return Err(err);
        }
        let result = op(self.db);
        let closed = if result.is_err() {
            self.db
                .execute("ROLLBACK TO SAVEPOINT pinion_write", &[])
                .and_then(|_| self.db.execute("RELEASE SAVEPOINT pinion_write", &[]))
        } else {
            self.db.execute("RELEASE SAVEPOINT pinion_write", &[])
        };
        if let Err(err) = closed {
            self.failed = Some(err.clone());
            return Err(err);
        }
        result
    }

    pub fn promote(&mut self, promotion: &Promotion) -> Result<PromoteOutcome, StoreError> {
        self.run(|db| ops::promote(db, promotion))
    }

    pub fn rollback(&mut self, rollback: &Rollback) -> Result<RollbackOutcome, StoreError> {
        self.run(|db| ops::rollback(db, rollback))
    }

    pub fn put_runtime(
        &mut self,
        runtime: &RuntimeRecord,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.run(|db| ops::put_runtime(db, runtime, at))
    }

    pub fn record_refusal(&mut self, refusal: &Refusal, retain: usize) -> Result<(), StoreError> {
        self.run(|db| ops::record_refusal(db, refusal, retain))
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
    /// Connects to a database that must exist already (for PostgreSQL, the
    /// server decides), and runs pending migrations: what a read such as
    /// `pinion token list` opens, so a mistyped path is not a new, empty
    /// database.
    pub fn open_existing(url: &DatabaseUrl) -> Result<Store, StoreError> {
        if let Some(path) = url.sqlite_path().filter(|_| url.is_missing()) {
            return Err(StoreError::Missing(format!(
                "no database at `{}`",
                path.display()
            )));
        }
        Store::open(url)
    }

    /// Connects (creating a SQLite file if absent: see
    /// [`DatabaseUrl::is_missing`] to tell first) and runs pending
    /// migrations.
    pub fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        Store::open_with(url, true)
    }

    /// Connects and runs pending migrations. With `create` false a database
    /// that does not exist yet (no SQLite file; no Pinion schema in the
    /// PostgreSQL database) is [`StoreError::Missing`] instead of being made.
    pub fn open_with(url: &DatabaseUrl, create: bool) -> Result<Store, StoreError> {
        let engine = match url {
            DatabaseUrl::Sqlite(path) => Engine::Sqlite(Sqlite::open(path, create)?),
            DatabaseUrl::Postgres(url) => Engine::Postgres(Box::new(Postgres::open(url, create)?)),
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

    /// One write transaction, committed or rolled back as `work` decides;
    /// `None` when rolled back.
    fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<Finish<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.transaction(work),
            Engine::Postgres(engine) => engine.transaction(work),
        }
    }

    /// One write transaction, committed if `work` succeeds.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(|db| work(db).map(Finish::Commit))?
            .ok_or_else(|| StoreError::Statement("a committed write gave no result".into()))
    }

    /// Whether the database this connection opened is still the one its
    /// URL names (a SQLite file can be deleted or replaced under a running
    /// server); always true for PostgreSQL.
    pub fn check_identity(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(engine) => engine.check_identity(),
            Engine::Postgres(_) => Ok(()),
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

    /// Runs several writes in one transaction, so they share one commit
    /// (group commit): `work` makes them through the [`Batch`], each in its
    /// own savepoint, so one that fails is rolled back alone and its caller
    /// told, then says whether to commit. `Ok(None)`: `work` chose to roll
    /// back. An `Err` means nothing was committed.
    pub fn batch<T>(
        &mut self,
        writes: usize,
        work: impl FnOnce(&mut Batch<'_>) -> Finish<T>,
    ) -> Result<Option<T>, StoreError> {
        self.transaction(|db| {
            let mut batch = Batch {
                db,
                // One write alone: its transaction is its savepoint.
                savepoints: writes > 1,
                failed: None,
            };
            let finish = work(&mut batch);
            match batch.failed {
                Some(err) => Err(err),
                None => Ok(finish),
            }
        })
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

    /// Records a refused write, keeping at most `retain` entries of its
    /// class (with a valid token, or without).
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
    pub fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|db| ops::audit(db, query))
    }

    /// Every token ever created, revoked ones included, oldest first.
    pub fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(ops::tokens)
    }
}
