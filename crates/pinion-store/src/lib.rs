//! Pinion's durable state: pins, the template catalog and API tokens.
//!
//! This is the only crate that knows SQL. It is synchronous on purpose: a
//! SQLite commit is a blocking fsync, and the caller decides on which thread
//! to pay for it (the server uses a blocking pool, the CLI its main thread).
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, so
//! every committed transaction has been fsync'd before `commit` returns. A
//! promotion the server acknowledged survives `kill -9` the next instant.

mod records;
mod sqlite;
mod url;

pub use records::{
    Action, AuditEntry, CiProvenance, Expectation, HistoryEntry, HistoryQuery, NewToken, PinRecord,
    PromoteOutcome, Promotion, Refusal, Rollback, RollbackOutcome, RuntimeRecord, Snapshot,
    TokenRecord, Write, Written,
};
pub use sqlite::Store;
pub use url::DatabaseUrl;

/// Why the store could not do what was asked. Expected refusals (an unknown
/// template, say) are not errors: they are [`PromoteOutcome`] values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("database unavailable: {0}")]
    Unavailable(#[from] rusqlite::Error),
    /// A row holds a value that no longer parses; someone edited the file by
    /// hand, or a migration is missing.
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
    /// The URL names an engine this build does not have.
    #[error("{0}")]
    UnsupportedUrl(String),
}
