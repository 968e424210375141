//! Page sessions. A session is stored as the SHA-256 of its id and of the
//! token it was made from, never either secret; the server checks on every
//! request that the token is still active, so a revoked token's sessions end.

use time::OffsetDateTime;

use super::events::unix_ms;
use crate::sql::{Columns, Sql, Value};
use crate::{SessionRecord, StoreError};

const SESSIONS: Columns = Columns {
    table: "ui_sessions",
    names: &["id_hash", "token_hash", "created_ms", "expires_ms"],
};

/// Stores a new session, and drops those that ended before it began.
pub(crate) fn create(db: &mut dyn Sql, session: &SessionRecord) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM ui_sessions WHERE expires_ms <= ?1",
        &[session.created_ms.into()],
    )?;
    db.execute(
        "INSERT INTO ui_sessions (id_hash, token_hash, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4)",
        &[
            Value::Blob(session.id_hash.to_vec()),
            Value::Blob(session.token_hash.to_vec()),
            session.created_ms.into(),
            session.expires_ms.into(),
        ],
    )?;
    Ok(())
}

/// The session with this id hash, if it has not ended by `now`.
pub(crate) fn get(
    db: &mut dyn Sql,
    id_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<Option<SessionRecord>, StoreError> {
    db.query(
        &format!(
            "SELECT {} FROM ui_sessions WHERE id_hash = ?1 AND expires_ms > ?2",
            SESSIONS.list()
        ),
        &[Value::Blob(id_hash.to_vec()), unix_ms(now).into()],
    )?
    .first()
    .map(|row| {
        let mut row = SESSIONS.reader(row, 0);
        Ok(SessionRecord {
            id_hash: row.next()?,
            token_hash: row.next()?,
            created_ms: row.next()?,
            expires_ms: row.next()?,
        })
    })
    .transpose()
}

/// Ends a session; false if there was none.
pub(crate) fn end(db: &mut dyn Sql, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
    Ok(db.execute(
        "DELETE FROM ui_sessions WHERE id_hash = ?1",
        &[Value::Blob(id_hash.to_vec())],
    )? > 0)
}
