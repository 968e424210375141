//! Which database to open, parsed from `--database` / `PINION_DATABASE_URL`.

use std::path::PathBuf;

use crate::StoreError;

/// A parsed database URL. Only SQLite exists today; `postgres://` is named so
/// the error says what is missing rather than "invalid URL".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` (relative to the working directory), `sqlite:///ABS`,
    /// or `sqlite:PATH`. The file is created if absent.
    Sqlite(PathBuf),
    /// `postgres://user@host:port/database` (or `postgresql://`), as libpq
    /// takes it, with `sslmode` and `sslrootcert` for TLS (see `pg_tls`).
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(input: &str) -> Result<Self, StoreError> {
        let path = input
            .strip_prefix("sqlite://")
            .or_else(|| input.strip_prefix("sqlite:"));
        match path {
            Some(path) if !path.is_empty() && !path.contains('\0') => {
                let path = path.split('?').next().unwrap_or(path);
                Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
            }
            Some(_) => Err(StoreError::UnsupportedUrl(
                "database URL `sqlite://` names no file; use `sqlite://pinion.db`".into(),
            )),
            None if input.starts_with("postgres://") || input.starts_with("postgresql://") => {
                Ok(DatabaseUrl::Postgres(input.to_owned()))
            }
            None => Err(StoreError::UnsupportedUrl(format!(
                "database URL must start with `sqlite://` or `postgres://`, got `{}`",
                input.chars().take(40).collect::<String>().escape_debug()
            ))),
        }
    }
}

impl DatabaseUrl {
    /// Whether this names a SQLite file that does not exist (opening it
    /// would create a new, empty database). Always false for PostgreSQL.
    pub fn is_missing(&self) -> bool {
        match self {
            DatabaseUrl::Sqlite(path) => !path.exists(),
            DatabaseUrl::Postgres(_) => false,
        }
    }

    /// The SQLite file's path, for messages; `None` for PostgreSQL (whose
    /// URL may carry a password and is never shown).
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            DatabaseUrl::Sqlite(path) => Some(path),
            DatabaseUrl::Postgres(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlite_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://pinion.db").unwrap(),
            DatabaseUrl::Sqlite("pinion.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/pinion/p.db").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/pinion/p.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:p.db?mode=rwc").unwrap(),
            DatabaseUrl::Sqlite("p.db".into())
        );
    }

    #[test]
    fn parses_postgres_urls() {
        assert_eq!(
            DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/pinion").unwrap(),
            DatabaseUrl::Postgres("postgres://postgres@127.0.0.1:5432/pinion".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgresql://db/pinion"),
            Ok(DatabaseUrl::Postgres(_))
        ));
    }

    #[test]
    fn refuses_other_urls() {
        for bad in ["", "pinion.db", "sqlite://", "mysql://x"] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad:?}");
        }
    }
}
