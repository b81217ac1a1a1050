//! Persistence: the connection type over SQLite and PostgreSQL, the r2d2 pool, the embedded
//! migrations, and the one way the rest of the server reaches the database ([`Db::run`], which
//! moves blocking diesel work off the async workers). The rows and queries of each table live
//! in [`tables`]; grouped writes go through [`writer`]; old data is removed by [`retention`];
//! [`storage`] keeps a full disk from breaking the database.

pub mod attempt;
mod bulk;
pub mod checkpoint;
pub mod event_key;
pub mod retention;
pub mod schema;
mod sqlite_rows;
pub mod storage;
pub mod tables;
mod text_enum;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{DatabaseConfig, DatabaseTarget, MemoryPlan};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Per-connection SQLite settings: 16 KiB pages (applies only when the file is created), wait
/// for the writer instead of failing, WAL for concurrent readers, the durability level WAL
/// makes safe (a crash of the process loses nothing that was committed; the writer's own
/// connection, which commits everything acknowledged, uses `database.synchronous`),
/// a checkpoint after 2,500 pages of log (the writer's own connection raises this: see
/// [`checkpoint`]), and a log file cut back to 64 MiB when it starts over. The page cache is
/// set apart: its size comes from `server.memory_budget` (see [`MemoryPlan`]).
const SQLITE_PRAGMAS: &str = "PRAGMA page_size = 16384; PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                              PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                              PRAGMA wal_autocheckpoint = 2500; \
                              PRAGMA journal_size_limit = 67108864;";

/// `PRAGMA cache_size` of connections opened with [`establish`] (command-line tools, tests):
/// SQLite's own default, 2,000 KiB. The server's connections take their share of the memory
/// budget through [`Connector`].
const SQLITE_DEFAULT_CACHE_SIZE: i64 = -2000;

/// Puts SQLite in multi-thread mode (`SQLITE_CONFIG_MULTITHREAD`): no mutex around each call
/// on a connection. Every connection here belongs to one thread at a time (diesel's
/// connections are `Send`, not `Sync`), so the serialized default only cost a lock and unlock
/// per bound value, step and column read: about 7 % of the SQLite writer's time under forwarder
/// load (docs/benchmarks.md). SQLite's own shared state (allocator, page cache) stays locked.
/// Works only before SQLite's first use in the process; returns whether it took effect.
pub fn use_sqlite_multithread_mode() -> bool {
    // SAFETY: sqlite3_config with SQLITE_CONFIG_MULTITHREAD takes no further argument; SQLite
    // refuses it (SQLITE_MISUSE) once the library is initialised, and changes nothing then.
    let rc = unsafe { libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MULTITHREAD) };
    rc == libsqlite3_sys::SQLITE_OK
}

/// Bytes SQLite has allocated in this process (page caches, schemas, statements), from
/// `sqlite3_status64(SQLITE_STATUS_MEMORY_USED)`; `None` when SQLite does not count.
pub fn sqlite_memory_used() -> Option<u64> {
    let (mut current, mut highwater) = (0i64, 0i64);
    // SAFETY: sqlite3_status64 only writes the two integers it is given pointers to.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_status64(
            libsqlite3_sys::SQLITE_STATUS_MEMORY_USED,
            &mut current,
            &mut highwater,
            0,
        )
    };
    (rc == libsqlite3_sys::SQLITE_OK)
        .then(|| u64::try_from(current).ok())
        .flatten()
}

/// One connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// Expands `$body` once per backend with `$c` bound to the concrete connection, for the few
/// statements whose SQL differs (insert-or-ignore, `FOR UPDATE SKIP LOCKED`).
#[macro_export]
macro_rules! per_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Postgres($c) => $body,
            $crate::db::DbConnection::Sqlite($c) => $body,
        }
    };
}

/// Which backend a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Errors of the persistence layer. Each message is complete in itself (no error chain
/// repeats the cause), and those about reaching the database name `database.url`.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database in database.url: {}", .0.to_string().trim_end())]
    Connect(diesel::ConnectionError),
    #[error(
        "cannot open the SQLite database `{path}` (database.url): {}; check that this user may write to its folder",
        .error.to_string().trim_end()
    )]
    Open {
        path: String,
        error: diesel::ConnectionError,
    },
    #[error("database query failed: {0}")]
    Query(diesel::result::Error),
    #[error("no database connection available: {0}")]
    Unavailable(r2d2::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error(
        "the folder `{path}` of the SQLite database in database.url does not exist: create it \
         (`mkdir -p {path}`) or correct database.url (ZULIP_LISTENERS_DATABASE__URL); only the \
         default folder `data/` is created by itself, so that a mistyped path does \
         not become a new, empty database"
    )]
    NoFolder { path: String },
    #[error("cannot create the database folder `{path}` (database.url): {error}")]
    Folder { path: String, error: std::io::Error },
    #[error("database task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Invalid(String),
}

// By hand rather than `#[from]`, which would also make the cause the error's `source`: a
// report of the whole chain (`{:#}`) then printed the cause twice.
impl From<diesel::ConnectionError> for DbError {
    fn from(error: diesel::ConnectionError) -> DbError {
        DbError::Connect(error)
    }
}

impl From<diesel::result::Error> for DbError {
    fn from(error: diesel::result::Error) -> DbError {
        DbError::Query(error)
    }
}

impl From<r2d2::Error> for DbError {
    fn from(error: r2d2::Error) -> DbError {
        DbError::Unavailable(error)
    }
}

/// The folder of the default SQLite database (`sqlite://data/zulip-listeners.db`), relative to
/// the working directory: the only one created when it is missing.
pub const DEFAULT_DATA_DIR: &str = "data";

/// Makes sure the folder of a SQLite database exists: the default relative [`DEFAULT_DATA_DIR`]
/// is created; any other missing folder is refused (a typo would otherwise give a new, empty
/// database).
fn sqlite_folder(path: &Path) -> Result<(), DbError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    let default = parent
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .eq([std::path::Component::Normal(DEFAULT_DATA_DIR.as_ref())]);
    if !default {
        return Err(DbError::NoFolder {
            path: parent.display().to_string(),
        });
    }
    std::fs::create_dir_all(parent).map_err(|error| DbError::Folder {
        path: parent.display().to_string(),
        error,
    })
}

/// How the server opens a connection to its database, with the page cache the memory budget
/// allots each SQLite connection: r2d2's connection manager for the pool, and the opener of the
/// writer's and checkpointer's connections of their own.
#[derive(Debug, Clone)]
pub struct Connector {
    target: DatabaseTarget,
    /// `PRAGMA cache_size` of each pooled connection and of the checkpointer's.
    cache_size: i64,
    /// `PRAGMA cache_size` of the writer's connection.
    writer_cache_size: i64,
}

impl Connector {
    /// Opens one connection: for the pool, or of its own (the checkpointer's).
    pub fn open(&self) -> Result<DbConnection, DbError> {
        establish_with_cache(&self.target, self.cache_size)
    }

    /// Opens a writer's connection, with the writer's larger share of the page cache.
    pub fn open_writer(&self) -> Result<DbConnection, DbError> {
        establish_with_cache(&self.target, self.writer_cache_size)
    }

    pub fn target(&self) -> &DatabaseTarget {
        &self.target
    }
}

impl r2d2::ManageConnection for Connector {
    type Connection = DbConnection;
    type Error = DbError;

    fn connect(&self) -> Result<DbConnection, DbError> {
        self.open()
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        conn.ping().map_err(DbError::Query)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Opens one connection outside the server (command-line tools, tests), with SQLite's default
/// page cache.
pub fn establish(target: &DatabaseTarget) -> Result<DbConnection, DbError> {
    establish_with_cache(target, SQLITE_DEFAULT_CACHE_SIZE)
}

/// Opens one connection with `PRAGMA cache_size = cache_size` on SQLite (negative: KiB).
pub fn establish_with_cache(
    target: &DatabaseTarget,
    cache_size: i64,
) -> Result<DbConnection, DbError> {
    match target {
        DatabaseTarget::Sqlite(path) => {
            sqlite_folder(path)?;
            let mut conn =
                diesel::SqliteConnection::establish(&path_str(path)?).map_err(|error| {
                    DbError::Open {
                        path: path.display().to_string(),
                        error,
                    }
                })?;
            conn.batch_execute(SQLITE_PRAGMAS)?;
            conn.batch_execute(&format!("PRAGMA cache_size = {cache_size};"))?;
            Ok(DbConnection::Sqlite(conn))
        }
        DatabaseTarget::Postgres(url) => Ok(DbConnection::Postgres(
            diesel::PgConnection::establish(url)?,
        )),
    }
}

fn path_str(path: &Path) -> Result<String, DbError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| DbError::Invalid(format!("database path {} is not UTF-8", path.display())))
}

/// Applies every pending migration of the connection's backend; returns their names.
pub fn run_migrations(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let applied = match conn {
        DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
        DbConnection::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
    }
    .map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(applied.iter().map(|v| v.to_string()).collect())
}

/// Migrations of the connection's backend not yet applied (names), without applying them.
pub fn pending_migrations(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let pending = match conn {
        DbConnection::Sqlite(c) => c
            .pending_migrations(SQLITE_MIGRATIONS)
            .map(|list| list.iter().map(|m| m.name().to_string()).collect()),
        DbConnection::Postgres(c) => c
            .pending_migrations(POSTGRES_MIGRATIONS)
            .map(|list| list.iter().map(|m| m.name().to_string()).collect()),
    };
    pending.map_err(|e| DbError::Migration(e.to_string()))
}

/// The pool and what the rest of the server needs to know about the database.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<Connector>,
    connector: Connector,
    backend: Backend,
    memory: MemoryPlan,
}

impl Db {
    /// Applies migrations on a dedicated connection, then builds the pool. Every SQLite
    /// connection opened through this database's [`Connector`] (pooled, the writer's, the
    /// checkpointer's) gets the page cache `memory` allots it.
    pub fn open(config: &DatabaseConfig, memory: MemoryPlan) -> Result<(Db, Vec<String>), DbError> {
        let target = config.url.clone();
        let connector = Connector {
            target: target.clone(),
            cache_size: memory.sqlite_cache_size_pragma(),
            writer_cache_size: memory.sqlite_writer_cache_size_pragma(),
        };
        let applied = run_migrations(&mut connector.open()?)?;
        let backend = match target {
            DatabaseTarget::Sqlite(_) => Backend::Sqlite,
            DatabaseTarget::Postgres(_) => Backend::Postgres,
        };
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size.get())
            .min_idle(Some(1))
            .connection_timeout(config.connection_timeout)
            .error_handler(Box::new(r2d2::LoggingErrorHandler))
            .build(connector.clone())?;
        Ok((
            Db {
                pool,
                connector,
                backend,
                memory,
            },
            applied,
        ))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn target(&self) -> &DatabaseTarget {
        self.connector.target()
    }

    /// How this database's connections are opened, for connections of their own.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// How the memory budget was shared out when the pool was built.
    pub fn memory(&self) -> MemoryPlan {
        self.memory
    }

    /// Runs blocking diesel work on the blocking thread pool with a pooled connection.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            work(&mut conn)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// The same, for callers that are not async (command-line tools).
    pub fn run_blocking<T>(
        &self,
        work: impl FnOnce(&mut DbConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut conn = self.pool.get()?;
        work(&mut conn)
    }

    /// Connections of the pool: (in use, idle).
    pub fn pool_state(&self) -> (u32, u32) {
        let state = self.pool.state();
        (
            state.connections.saturating_sub(state.idle_connections),
            state.idle_connections,
        )
    }

    /// Checks that a connection can be had within `timeout` and answers a query.
    pub async fn ping(&self, timeout: Duration) -> Result<(), DbError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get_timeout(timeout)?;
            conn.ping().map_err(DbError::Query)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod migration_tests {
    /// Diesel orders and records migrations by the part of the folder name before the first
    /// `_`: two folders with one version would silently run only one of them.
    #[test]
    fn migration_versions_are_unique_and_the_same_on_both_backends() {
        let versions = |backend: &str| -> Vec<String> {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        };
        let sqlite = versions("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(
            sqlite,
            versions("postgres"),
            "one migration per backend, same names"
        );
        let mut seen = std::collections::HashSet::new();
        for name in &sqlite {
            let version = name.split('_').next().unwrap_or_default();
            assert!(
                seen.insert(version.to_string()),
                "version {version} used twice: {name}"
            );
        }
    }
}
