//! A database of its own for each test ([`TestDatabase`]: a temporary SQLite file, or a fresh
//! schema on the PostgreSQL server), and the readers tests use to look into it.

use diesel::prelude::*;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::tables::inbox::InboxStatus;
use zulip_listeners::db::{DbConnection, establish, run_migrations, tables};

use super::backend::{Backend, PG_ENV, postgres_enabled};
use super::process::ConfigFile;

/// A database of its own for one test, removed afterwards.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDatabase {
    pub fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDatabase {
                    url,
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let base = std::env::var(PG_ENV).expect("PostgreSQL URL");
                let schema = format!("zl_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::establish(&base).expect("connect to PostgreSQL");
                diesel::sql_query(format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .expect("create schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                TestDatabase {
                    url,
                    _dir: None,
                    pg: Some((base, schema)),
                }
            }
        }
    }

    /// A PostgreSQL database for a PostgreSQL-only test, or `None` (said on stderr) when
    /// `ZULIP_LISTENERS_TEST_PG_URL` is not set.
    pub fn postgres() -> Option<TestDatabase> {
        postgres_enabled().then(|| TestDatabase::new(Backend::Postgres))
    }

    /// A configuration file naming this database, followed by `extra`.
    pub fn config_file(&self, extra: &str) -> ConfigFile {
        ConfigFile::new(&format!(
            "[database]\nurl = \"{}\"\n{}{extra}",
            self.url.replace('\\', "\\\\"),
            super::server::TEST_ROOM
        ))
    }

    /// A connection of the test's own, with the migrations run.
    pub fn connect(&self) -> DbConnection {
        let target = zulip_listeners::config::parse_database_url(&self.url).expect("database url");
        let mut conn = establish(&target).expect("connect");
        run_migrations(&mut conn).expect("migrations");
        conn
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.pg
            && let Ok(mut conn) = PgConnection::establish(base)
        {
            let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn);
        }
    }
}

/// Inbox events per status.
pub fn inbox_counts(c: &mut DbConnection) -> Vec<(InboxStatus, i64)> {
    tables::inbox::inbox_counts(c).expect("inbox counts")
}

/// The count of `status` among `counts` (0 when absent).
pub fn count_of(counts: &[(InboxStatus, i64)], status: InboxStatus) -> i64 {
    counts
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| *n)
}

/// Inbox events with `status`.
pub fn inbox_count(c: &mut DbConnection, status: InboxStatus) -> i64 {
    count_of(&inbox_counts(c), status)
}

/// Event-log rows for a message: (handler, success), in the order they ran.
pub fn log_rows_for(conn: &mut DbConnection, message: i64) -> Vec<(String, bool)> {
    use zulip_listeners::db::schema::event_log as log;
    log::table
        .filter(log::message_id.eq(message))
        .order(log::id)
        .select((log::listener, log::success))
        .load(conn)
        .expect("event log")
}

/// The status and stored envelope of an inbox event.
pub fn inbox_status(c: &mut DbConnection, event_id: &str) -> (InboxStatus, String) {
    use zulip_listeners::db::schema::inbox;
    inbox::table
        .filter(inbox::event_id.eq(EventKey::of(event_id)))
        .select((inbox::status, inbox::payload))
        .first(c)
        .expect("inbox row")
}

/// The errors of the event-log rows of `handler` (a listener or a guard), in no particular
/// order.
pub fn log_errors(c: &mut DbConnection, handler: &str) -> Vec<Option<String>> {
    use zulip_listeners::db::schema::event_log as log;
    log::table
        .filter(log::listener.eq(handler))
        .select(log::error)
        .load(c)
        .expect("event log")
}
