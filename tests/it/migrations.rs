//! Migrations that change stored data, run against rows written the old way: event ids kept
//! as text become compact keys (000011) and go back to the same text when it is reverted;
//! inbox rows get the id of the message whose text they hold, and filtered ones lose their
//! envelope (000013). And the diesel CLI is never told to overwrite the hand-written schema.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use zulip_listeners::db::tables::inbox::inbox_entry;
use zulip_listeners::db::{DbConnection, establish, run_migrations};

use crate::support::{Backend, TestDatabase, backend_test};

/// The migration that stores event ids compactly.
const COMPACT_IDS: &str = "2026-12-03-000011_compact_event_ids";
/// The migration that indexes inbox rows by the message whose text they hold.
const ERASURE: &str = "2026-12-07-000013_erasure";

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

/// Reverts migrations, newest first, until `last` is reverted.
fn revert_through(conn: &mut DbConnection, backend: Backend, last: &str) {
    loop {
        let reverted = match &mut *conn {
            DbConnection::Sqlite(c) => c.revert_last_migration(migration_files(backend)),
            DbConnection::Postgres(c) => c.revert_last_migration(migration_files(backend)),
        }
        .expect("revert");
        if reverted.to_string() == last.replace(['-', '_'], "")[..14] {
            return;
        }
    }
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
    assert_eq!(applied.first().map(String::as_str), Some("20261203000011"));
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

    revert_through(&mut conn, backend, COMPACT_IDS);
    assert_eq!(text_ids(&mut conn, "inbox"), before);
    assert_eq!(text_ids(&mut conn, "inbox_work"), before);
}

#[derive(QueryableByName)]
struct Indexed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    message_id: Option<i64>,
    #[diesel(sql_type = Text)]
    payload: String,
}

backend_test!(fn inbox_rows_get_the_message_they_hold_and_filtered_ones_lose_their_envelope);
fn inbox_rows_get_the_message_they_hold_and_filtered_ones_lose_their_envelope(backend: Backend) {
    let db = TestDatabase::new(backend);
    let target = zulip_listeners::config::parse_database_url(&db.url).expect("database url");
    let mut conn = establish(&target).expect("connect");
    let source = migration_files(backend);
    match &mut conn {
        DbConnection::Sqlite(c) => migrate_until(c, source, ERASURE),
        DbConnection::Postgres(c) => migrate_until(c, source, ERASURE),
    }
    let message = r#"{"v":1,"event_id":"a","realm":{"id":2},"type":"message","event":{"type":"message","message":{"id":501,"content":"hi \u0000 there"}}}"#;
    let edit = r#"{"v":1,"event_id":"b","realm":{"id":2},"type":"update_message","event":{"type":"update_message","message_id":502,"content":"new"}}"#;
    let odd = r#"{"v":1,"event_id":"c","realm":{"id":2},"type":"message","event":{"type":"message","message":{"id":"503"}}}"#;
    let surrogate = r#"{"v":1,"event_id":"e","realm":{"id":2},"type":"message","event":{"type":"message","message":{"id":504,"content":"\ud800 \\u0000"}}}"#;
    let reaction = r#"{"v":1,"event_id":"d","realm":{"id":2},"type":"reaction","event":{"type":"reaction","message_id":501}}"#;
    let rows = [
        (1, "message", "dead", message),
        (2, "update_message", "pending", edit),
        (3, "message", "expired", odd),
        (4, "reaction", "dead", reaction),
        (5, "message", "filtered", message),
        (6, "message", "done", ""),
        (7, "message", "dead", surrogate),
    ];
    for (id, event_type, status, payload) in rows {
        diesel::sql_query(format!(
            "INSERT INTO inbox (id, event_id, webhook_id, realm_id, realm, event_type, payload, \
             status, next_attempt_at_ms, received_at_ms, updated_at_ms) \
             VALUES ({id}, {key}, 'msg_{id}', 2, 'zulip', '{event_type}', '{payload}', '{status}', \
             0, 0, 0)",
            key = match backend {
                Backend::Sqlite => format!("x'01{id:02x}'"),
                Backend::Postgres => format!("'\\x01{id:02x}'::bytea"),
            },
            payload = payload.replace('\'', "''"),
        ))
        .execute(&mut conn)
        .expect("old inbox row");
    }

    let applied = run_migrations(&mut conn).expect("migrations");
    assert_eq!(applied.first().map(String::as_str), Some("20261207000013"));
    let stored: Vec<Indexed> =
        diesel::sql_query("SELECT id, message_id, payload FROM inbox ORDER BY id")
            .load(&mut conn)
            .expect("rows");
    let ids: Vec<(i64, Option<i64>)> = stored.iter().map(|r| (r.id, r.message_id)).collect();
    assert_eq!(
        ids,
        [
            (1, Some(501)),
            (2, Some(502)),
            (3, None),
            (4, None),
            (5, None),
            (6, None),
            // PostgreSQL cannot read a lone surrogate: left to retention, not a failure.
            (7, (backend == Backend::Sqlite).then_some(504))
        ],
        "{backend:?}: a message's id, an edit's message; not a reaction's, nor a text id"
    );
    assert_eq!(
        stored[4].payload, "",
        "{backend:?}: a filtered event keeps no envelope"
    );
    assert_eq!(
        stored[0].payload, message,
        "{backend:?}: the others are unchanged"
    );

    revert_through(&mut conn, backend, ERASURE);
    let columns: Vec<Indexed> =
        diesel::sql_query("SELECT id, NULL AS message_id, payload FROM inbox")
            .load(&mut conn)
            .expect("rows after the revert");
    assert_eq!(columns.len(), 7);
    let gone = diesel::sql_query("SELECT message_id FROM inbox").execute(&mut conn);
    assert!(gone.is_err(), "{backend:?}: the column is dropped");
}

/// `src/db/schema.rs` is written by hand for both backends: `diesel.toml` must not name it as
/// the file `diesel migration run` regenerates (a `[print_schema] file`), nor any file under
/// `src/`.
#[test]
fn the_diesel_cli_never_overwrites_the_hand_written_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("diesel.toml");
    let text = std::fs::read_to_string(&path).expect("diesel.toml");
    let settings: toml::Table = text.parse().expect("diesel.toml is TOML");
    let written = settings
        .get("print_schema")
        .and_then(|section| section.get("file"))
        .and_then(|file| file.as_str());
    if let Some(file) = written {
        assert!(
            !file.trim_start_matches("./").starts_with("src/"),
            "diesel.toml: print_schema writes {file}, which is hand-written source"
        );
    }
    assert_eq!(
        settings
            .get("migrations_directory")
            .and_then(|section| section.get("dir"))
            .and_then(|dir| dir.as_str()),
        Some("migrations/sqlite")
    );
    assert!(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/sqlite")
            .is_dir()
    );
}
