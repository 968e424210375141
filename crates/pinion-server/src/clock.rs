//! The server's one reader of the wall clock. Everything that needs the
//! time asks here, so there is one seam to replace when time is to be
//! driven by a test, and one conversion to the milliseconds the fleet and
//! the outbox count in.

use time::OffsetDateTime;

/// Now, in UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Milliseconds since the Unix epoch (saturating far in the future).
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    unix_ms(now())
}
