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
mod pg_tls;
mod postgres;
mod records;
mod sql;
mod sqlite;
mod url;

use pinion_core::{Digest, InstanceId, Region, TemplateName, TokenName, WebhookName};
use time::OffsetDateTime;

pub use ops::{CLAIM_LEASE_MS, Redelivery};
pub use pinion_core::Expectation;
pub use records::{
    AbortCause, AbortOutcome, Action, AttemptRecord, AuditEntry, AuditQuery, Canary, CanaryAbort,
    CanaryFigures, CanaryOutcome, CanaryRequest, CiProvenance, DeliveryRecord, DeliveryState,
    DriftObservation, DueDelivery, EventPage, EventQuery, EventRecord, FleetTransition,
    HistoryEntry, HistoryQuery, Hold, HoldOutcome, HoldRequest, InstanceRecord, NewToken,
    PinRecord, PromoteOutcome, Promotion, Refusal, Release, ReleaseOutcome, Rollback,
    RollbackOutcome, RuntimeRecord, SessionRecord, Snapshot, SoakFigures, TokenRecord, WebhookPut,
    WebhookRecord, WebhookUpdate,
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
        // The kind, then its causes: "error performing TLS handshake:
        // invalid peer certificate: UnknownIssuer", "db error: ERROR: …".
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
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
}

/// Every write, declared once: each is a method of [`Store`] (its own
/// transaction) and of [`Batch`] (one savepoint of a group commit).
macro_rules! writes {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty = $op:path;)*) => {
        impl Batch<'_> {
            $($(#[$doc])* pub fn $name(&mut self, $($arg: $ty),*) -> Result<$out, StoreError> {
                self.run(|db| $op(db, $($arg),*))
            })*
        }

        impl Store {
            $($(#[$doc])* pub fn $name(&mut self, $($arg: $ty),*) -> Result<$out, StoreError> {
                self.write(|db| $op(db, $($arg),*))
            })*
        }
    };
}

writes! {
    /// Moves a pin, or says why not, in one transaction: the catalog check,
    /// the read of the current pin, the guards, the pin write, its history
    /// entry and its event all see and leave one consistent state.
    fn promote(promotion: &Promotion) -> PromoteOutcome = ops::promote;
    /// Moves a pin back to a digest it had before (and holds it, if asked,
    /// in the same transaction).
    fn rollback(rollback: &Rollback) -> RollbackOutcome = ops::rollback;
    /// Holds a pin: promotions to it are refused until it is released.
    fn hold(hold: &HoldRequest) -> HoldOutcome = ops::hold;
    /// Releases a pin's hold.
    fn release(release: &Release) -> ReleaseOutcome = ops::release;
    /// Starts, replaces or widens a pin's canary.
    fn start_canary(request: &CanaryRequest) -> CanaryOutcome = ops::start_canary;
    /// Aborts a pin's canary (and holds the pin, if asked).
    fn abort_canary(abort: &CanaryAbort) -> AbortOutcome = ops::abort_canary;
    /// Adds or changes a catalog entry. Returns true when it was new.
    fn put_runtime(runtime: &RuntimeRecord, at: OffsetDateTime) -> bool = ops::put_runtime;
    /// Records a refused write, keeping at most `retain` entries of its
    /// class (with a valid token, or without).
    fn record_refusal(refusal: &Refusal, retain: usize) -> () = ops::record_refusal;
    /// Stores a new token. Fails if an active token has the same name.
    fn create_token(token: &NewToken) -> () = ops::create_token;
    /// Revokes the active token of that name. Returns false if there was none.
    fn revoke_token(name: &TokenName, at: OffsetDateTime) -> bool = ops::revoke_token;
    /// Stores a token made over HTTP; false when an active token has the
    /// name (nothing written).
    fn create_token_if_free(token: &NewToken) -> bool = ops::create_token_if_free;
    /// The same over HTTP, by `actor`, recorded in the change feed.
    fn revoke_token_by(name: &TokenName, actor: &TokenName, at: OffsetDateTime) -> bool = ops::revoke_token_by;
    /// Records the drift watcher's observations; returns the ids of the
    /// events their flips appended.
    fn record_drift(seen: &[DriftObservation]) -> Vec<i64> = ops::record_drift;
    /// Stores a new page session (and drops ended ones).
    fn create_session(session: &SessionRecord) -> () = ops::create_session;
    /// Ends a page session. False if there was none.
    fn end_session(id_hash: &[u8; 32]) -> bool = ops::end_session;
    /// Adds or changes a webhook.
    fn put_webhook(update: &WebhookUpdate) -> WebhookPut = ops::put_webhook;
    /// Deletes a webhook and its deliveries. False if there was none.
    fn delete_webhook(name: &WebhookName) -> bool = ops::delete_webhook;
    /// Queues one more attempt of a delivery, now.
    fn redeliver(name: &WebhookName, event_id: i64, now: OffsetDateTime) -> Redelivery = ops::redeliver;
    /// Claims up to `limit` due deliveries (see [`CLAIM_LEASE_MS`]), none of
    /// the webhooks in `skip`.
    fn claim_deliveries(now: OffsetDateTime, limit: usize, skip: &[WebhookName]) -> Vec<DueDelivery> = ops::claim_deliveries;
    /// Records delivery attempts; true if one appended an event (a webhook
    /// disabled by its receiver's `410`).
    fn record_attempts(attempts: &[AttemptRecord]) -> bool = ops::record_attempts;
    /// Prunes the events older than `before` beyond the newest `keep`.
    fn prune_events(before: OffsetDateTime, keep: i64) -> u64 = ops::prune_events;
    /// Releases every delivery claim (see `ops::webhooks::release_claims`).
    fn release_claims() -> u64 = ops::release_claims;
    /// Writes instances' last reports.
    fn flush_instances(rows: &[InstanceRecord]) -> () = ops::flush_instances;
    /// Notes that a server is taking reports at `now_ms`.
    fn mark_fleet_alive(now_ms: i64) -> () = ops::mark_fleet_alive;
    /// Marks an instance deleted (a tombstone); false if there is none.
    fn delete_instance(id: &InstanceId, at_ms: i64) -> bool = ops::delete_instance;
    /// Forgets instances silent since before `before_ms`, and old tombstones.
    fn forget_instances(before_ms: i64) -> u64 = ops::forget_instances;
    /// Records pins' fleets entering states; returns the events appended.
    fn record_fleet_transitions(transitions: &[FleetTransition]) -> Vec<i64> = ops::record_fleet_transitions;
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
    /// `None` when rolled back. `announce`: the write changes what replicas
    /// serve (PostgreSQL bumps the change counter, which also serialises it
    /// with every other announced write, and notifies the replicas); quiet
    /// bookkeeping (delivery claims and attempts) does neither.
    fn transaction<T>(
        &mut self,
        announce: bool,
        work: impl FnOnce(&mut dyn Sql) -> Result<Finish<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.transaction(work),
            Engine::Postgres(engine) => engine.transaction(announce, work),
        }
    }

    /// One write transaction, committed if `work` succeeds.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(true, |db| work(db).map(Finish::Commit))?
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
        announce: bool,
        work: impl FnOnce(&mut Batch<'_>) -> Finish<T>,
    ) -> Result<Option<T>, StoreError> {
        self.transaction(announce, |db| {
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

    /// History entries, newest first.
    pub fn history(&mut self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read(|db| ops::history(db, query))
    }

    /// Audit entries (refused writes), newest first.
    pub fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|db| ops::audit(db, query))
    }

    /// A page of the change feed, and where it stands.
    pub fn events(&mut self, query: &EventQuery) -> Result<EventPage, StoreError> {
        self.read(|db| ops::events_page(db, query))
    }

    /// The page session with this id hash, unless it has ended by `now`.
    pub fn session(
        &mut self,
        id_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|db| ops::session(db, id_hash, now))
    }

    /// Every webhook, by name.
    pub fn webhooks(&mut self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.read(ops::webhooks)
    }

    pub fn webhook(&mut self, name: &WebhookName) -> Result<Option<WebhookRecord>, StoreError> {
        self.read(|db| ops::webhook(db, name))
    }

    /// A webhook's newest deliveries, newest event first.
    pub fn deliveries(
        &mut self,
        name: &WebhookName,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read(|db| ops::deliveries(db, name, limit))
    }

    /// Whether a delivery is due (a read, before claiming, which writes).
    pub fn any_delivery_due(&mut self, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.read(|db| ops::any_delivery_due(db, now))
    }

    /// One instance, unless deleted.
    pub fn find_instance(&mut self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        self.read(|db| ops::instance(db, id))
    }

    /// Every instance not deleted.
    pub fn instances(&mut self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.read(ops::load_instances)
    }

    /// When a server last took reports (Unix milliseconds; 0 if never).
    pub fn fleet_alive_ms(&mut self) -> Result<i64, StoreError> {
        self.read(ops::fleet_alive_ms)
    }

    /// Instance rows written at or after `since_ms`, tombstones included.
    pub fn instances_changed_since(
        &mut self,
        since_ms: i64,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        self.read(|db| ops::instances_changed_since(db, since_ms))
    }

    /// The digests of each pin's newest `per_pin` history entries.
    pub fn recent_digests(
        &mut self,
        per_pin: usize,
    ) -> Result<Vec<(TemplateName, Region, Digest)>, StoreError> {
        self.read(|db| ops::recent_digests(db, per_pin))
    }

    /// Every token ever created, revoked ones included, oldest first.
    pub fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(ops::tokens)
    }
}
