//! `[database]`: which database ([`DatabaseTarget`], read from `database.url`), the pool, the
//! writer's batches and SQLite's `synchronous`.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path`, a plain file path, or `postgres://…`.
    #[serde(deserialize_with = "database_url")]
    pub url: DatabaseTarget,
    /// Connections in the read pool.
    pub pool_size: NonZeroU32,
    /// How long to wait for a pooled connection.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Most rows the background writer groups into one transaction.
    pub write_batch_size: NonZeroUsize,
    /// Writer threads (each with its own connection) on PostgreSQL, realms shared out among
    /// them; SQLite always has one writer.
    #[serde(deserialize_with = "postgres_writers")]
    pub postgres_writers: NonZeroUsize,
    /// SQLite `synchronous` of the writer's connection.
    pub synchronous: Synchronous,
    /// Free bytes on the SQLite database's filesystem below which new work is refused
    /// (0: no floor).
    #[serde(deserialize_with = "byte_size")]
    pub min_free_space: u64,
    /// Size of SQLite's write-ahead log above which new writes wait for a checkpoint.
    #[serde(deserialize_with = "max_wal_size")]
    pub max_wal_size: u64,
}

/// A size such as "256MiB".
fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    super::server::parse_byte_size(&String::deserialize(deserializer)?).map_err(D::Error::custom)
}

/// Smallest `database.max_wal_size`: below it the log would be emptied almost every commit.
const MIN_WAL_SIZE: u64 = 1 << 20;

fn max_wal_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let size = byte_size(deserializer)?;
    if size < MIN_WAL_SIZE {
        return Err(D::Error::custom(format!(
            "must be at least 1MiB (is {size} bytes)"
        )));
    }
    Ok(size)
}

/// `database.synchronous`: how durable a commit of the writer's SQLite connection is before
/// it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit, intake included, is on disk before it is acknowledged.
    Full,
    Extra,
    /// Faster; a power loss or OS crash may roll back the last commits.
    Normal,
}

impl DatabaseConfig {
    /// The `PRAGMA synchronous` value for the writer's SQLite connection.
    pub fn sqlite_synchronous(&self) -> &'static str {
        match self.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Extra => "EXTRA",
            Synchronous::Full => "FULL",
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url)
            .field("pool_size", &self.pool_size)
            .field("connection_timeout", &self.connection_timeout)
            .field("write_batch_size", &self.write_batch_size)
            .field("postgres_writers", &self.postgres_writers)
            .field("synchronous", &self.synchronous)
            .field("min_free_space", &self.min_free_space)
            .field("max_wal_size", &self.max_wal_size)
            .finish()
    }
}

/// Most writer threads `database.postgres_writers` may ask for.
const MAX_POSTGRES_WRITERS: usize = 64;

/// `database.postgres_writers`: 1 to [`MAX_POSTGRES_WRITERS`].
fn postgres_writers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NonZeroUsize, D::Error> {
    let writers = NonZeroUsize::deserialize(deserializer)?;
    if writers.get() > MAX_POSTGRES_WRITERS {
        return Err(D::Error::custom(format!(
            "{writers} writers is more than the {MAX_POSTGRES_WRITERS} allowed (each holds a \
             PostgreSQL connection)"
        )));
    }
    Ok(writers)
}

impl DatabaseConfig {
    /// How many writer threads the database gets: `postgres_writers` on PostgreSQL, one on
    /// SQLite (a single writer is what SQLite allows).
    pub fn writers(&self) -> usize {
        match self.url {
            DatabaseTarget::Postgres(_) => self.postgres_writers.get(),
            DatabaseTarget::Sqlite(_) => 1,
        }
    }
}

/// Which database the URL names. `Debug` and `Display` mask a PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DatabaseTarget::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&crate::redact::database_url(url))
                .finish(),
        }
    }
}

impl fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => write!(f, "SQLite {}", path.display()),
            DatabaseTarget::Postgres(url) => {
                write!(f, "PostgreSQL {}", crate::redact::database_url(url))
            }
        }
    }
}

fn database_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DatabaseTarget, D::Error> {
    parse_database_url(&String::deserialize(deserializer)?).map_err(D::Error::custom)
}

/// Parses `sqlite://path`, `sqlite:path`, a plain path, or `postgres://…` / `postgresql://…`.
pub fn parse_database_url(url: &str) -> Result<DatabaseTarget, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("is empty; use sqlite://data/zulip-listeners.db or postgres://…".into());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseTarget::Postgres(url.to_string()));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.contains("://") {
        return Err(format!(
            "`{url}` has an unsupported scheme; use sqlite:// or postgres://"
        ));
    }
    if path.is_empty() || path == ":memory:" {
        return Err("needs a file: an in-memory SQLite database would lose every event".into());
    }
    Ok(DatabaseTarget::Sqlite(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            parse_database_url("sqlite://data/x.db"),
            Ok(DatabaseTarget::Sqlite("data/x.db".into()))
        );
        assert_eq!(
            parse_database_url("/tmp/x.db"),
            Ok(DatabaseTarget::Sqlite("/tmp/x.db".into()))
        );
        assert!(matches!(
            parse_database_url("postgres://u@h/db"),
            Ok(DatabaseTarget::Postgres(_))
        ));
        assert!(parse_database_url("mysql://x").is_err());
        assert!(parse_database_url(":memory:").is_err());
    }
}
