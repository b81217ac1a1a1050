//! Migrations that change stored data, run against rows written the old way: event ids kept
//! as text become compact keys (000011) and go back to the same text when it is reverted.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use zulip_listeners::db::tables::inbox::inbox_entry;
use zulip_listeners::db::{DbConnection, establish, run_migrations};

use crate::support::{Backend, TestDatabase, backend_test};

/// The migration that stores event ids compactly.
const COMPACT_IDS: &str = "2026-12-03-000011_compact_event_ids";

/// Ids of every kind the forwarder or an older sender may have stored.
const IDS: &[&str] = &[
    "0192f0c4-5b6e-7a1b-8c2d-3e4f5a6b7c8d",
    "c4a0e2f1-93d7-4b8e-a6f5-0d2c9b1e7a34",
    "C4A0E2F1-93D7-4B8E-A6F5-0D2C9B1E7A34",
    "c4a0e2f193d74b8ea6f50d2c9b1e7a34",
    "evt-1",
    "ünïcødé ✓",
];

#[derive(QueryableByName)]
struct IdLength {
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

/// The migrations of `backend` as files, as a new installation would apply them one by one.
fn migration_files(backend: Backend) -> FileBasedMigrations {
    let dir = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    FileBasedMigrations::from_path(dir).expect("migrations folder")
}

/// Applies migrations one at a time until `stop` would be next.
fn migrate_until<DB: diesel::backend::Backend>(
    c: &mut impl MigrationHarness<DB>,
    source: FileBasedMigrations,
    stop: &str,
) where
    FileBasedMigrations: diesel::migration::MigrationSource<DB>,
{
    loop {
        let pending = c
            .pending_migrations(source.clone())
            .expect("pending migrations");
        let Some(next) = pending.into_iter().next() else {
            panic!("{stop} is not among the migrations");
        };
        if next.name().to_string() == stop {
            return;
        }
        c.run_migration(&*next).expect("migration");
    }
}

fn text_ids(conn: &mut DbConnection, table: &str) -> Vec<String> {
    let mut ids: Vec<String> = diesel::sql_query(format!("SELECT event_id FROM {table}"))
        .load::<IdText>(conn)
        .expect("ids")
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    ids.sort();
    ids
}

#[derive(QueryableByName)]
struct IdText {
    #[diesel(sql_type = Text)]
    event_id: String,
}

backend_test!(fn text_event_ids_become_compact_keys_and_back);
fn text_event_ids_become_compact_keys_and_back(backend: Backend) {
    let db = TestDatabase::new(backend);
    let target = zulip_listeners::config::parse_database_url(&db.url).expect("database url");
    let mut conn = establish(&target).expect("connect");
    let source = migration_files(backend);
    match &mut conn {
        DbConnection::Sqlite(c) => migrate_until(c, source, COMPACT_IDS),
        DbConnection::Postgres(c) => migrate_until(c, source, COMPACT_IDS),
    }
    for (n, id) in IDS.iter().enumerate() {
        let id = id.replace('\'', "''");
        diesel::sql_query(format!(
            "INSERT INTO inbox (event_id, webhook_id, realm_id, realm, event_type, payload, \
             status, next_attempt_at_ms, received_at_ms, updated_at_ms) \
             VALUES ('{id}', 'msg_{n}', 2, 'zulip', 'message', '{{}}', 'dead', 0, {n}, {n})"
        ))
        .execute(&mut conn)
        .expect("old inbox row");
        diesel::sql_query(format!(
            "INSERT INTO inbox_work (event_id, listener, status, next_attempt_at_ms, \
             updated_at_ms) VALUES ('{id}', 'echo', 'dead', 0, {n})"
        ))
        .execute(&mut conn)
        .expect("old work row");
    }
    let mut before: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
    before.sort();

    let applied = run_migrations(&mut conn).expect("migrations");
    // 000011 first, then any later migration.
    assert_eq!(applied.first().map(|v| v.as_str()), Some("20261203000011"));
    for id in IDS {
        let entry = inbox_entry(&mut conn, id)
            .expect("look-up")
            .expect("row found");
        assert_eq!(entry.event_id, *id);
    }
    let length = match backend {
        Backend::Sqlite => "length(event_id)",
        Backend::Postgres => "octet_length(event_id)",
    };
    let hex = match backend {
        Backend::Sqlite => "hex(event_id)",
        Backend::Postgres => "upper(encode(event_id, 'hex'))",
    };
    let stored: Vec<IdLength> = diesel::sql_query(format!(
        "SELECT {hex} AS event_id, CAST({length} AS BIGINT) AS bytes FROM inbox ORDER BY id"
    ))
    .load(&mut conn)
    .expect("stored keys");
    assert_eq!(stored[0].event_id, "000192F0C45B6E7A1B8C2D3E4F5A6B7C8D");
    assert_eq!(stored[1].bytes, 17);
    // Not canonical: kept as text behind the other tag.
    assert_eq!(stored[2].bytes, 37);
    assert!(stored[4].event_id.starts_with("01"));

    // Reverted down to before 000011, later migrations first.
    let source = migration_files(backend);
    loop {
        let reverted = match &mut conn {
            DbConnection::Sqlite(c) => c.revert_last_migration(source.clone()),
            DbConnection::Postgres(c) => c.revert_last_migration(source.clone()),
        }
        .expect("revert")
        .to_string();
        if reverted == "20261203000011" {
            break;
        }
    }
    assert_eq!(text_ids(&mut conn, "inbox"), before);
    assert_eq!(text_ids(&mut conn, "inbox_work"), before);
}
