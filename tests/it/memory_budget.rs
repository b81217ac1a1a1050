//! The memory budget (`server.memory_budget`): SQLite's page cache of every connection follows
//! it, on a real SQLite file, and a budget that cannot be read or is too small is refused with
//! the key named.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use zulip_listeners::config::{Config, ConfigError, MemoryPlan, parse_byte_size};
use zulip_listeners::db::{Db, DbConnection};

#[derive(QueryableByName)]
struct CacheSize {
    #[diesel(sql_type = BigInt)]
    cache_size: i64,
}

fn cache_size(conn: &mut DbConnection) -> i64 {
    let DbConnection::Sqlite(c) = conn else {
        panic!("expected SQLite");
    };
    diesel::sql_query("PRAGMA cache_size")
        .get_result::<CacheSize>(c)
        .expect("PRAGMA cache_size")
        .cache_size
}

fn config(extra: &str, db_url: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!("[database]\nurl = \"{db_url}\"\n{extra}"))
}

#[test]
fn the_page_cache_of_every_connection_follows_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("budget.db").display());
    // Two budgets over one file: each database's connections follow its own budget. A quarter
    // of the budget is page cache: half of that for the writer, the rest shared by the pool
    // and the checkpointer.
    for (budget, pool_size, kib, writer_kib) in [
        ("64MiB", 8u32, 8 * 1024 / 9, 8 * 1024),
        ("200MiB", 3, 25 * 1024 / 4, 25 * 1024),
    ] {
        let config = config(
            &format!("pool_size = {pool_size}\n[server]\nmemory_budget = \"{budget}\""),
            &url,
        )
        .expect("valid configuration");
        let plan = config.server.memory(config.database.pool_size);
        assert_eq!(plan.sqlite_connections, u64::from(pool_size) + 2);
        assert_eq!(plan.sqlite_cache_size_pragma(), -kib, "{budget}");
        assert_eq!(
            plan.sqlite_writer_cache_size_pragma(),
            -writer_kib,
            "{budget}"
        );
        let (db, _) = Db::open(&config.database, plan).expect("open");
        let pooled = db
            .run_blocking(|c| Ok(cache_size(c)))
            .expect("pooled connection");
        assert_eq!(pooled, -kib, "pooled connection, budget {budget}");
        // The checkpointer's and the writer's connections are opened by the same connector.
        let mut own = db.connector().open().expect("a connection of its own");
        assert_eq!(
            cache_size(&mut own),
            -kib,
            "checkpointer's connection, budget {budget}"
        );
        let mut writer = db
            .connector()
            .open_writer()
            .expect("the writer's connection");
        assert_eq!(
            cache_size(&mut writer),
            -writer_kib,
            "writer's connection, budget {budget}"
        );
        // All connections together stay within a quarter of the budget.
        let quarter = parse_byte_size(budget).expect("size") / 4;
        assert!(plan.sqlite_cache_total() <= quarter);
        assert!(plan.sqlite_cache_total() > quarter - 64 * 1024, "{plan:?}");
    }
}

#[test]
fn the_default_budget_keeps_page_caches_small() {
    let config = Config::from_toml("").expect("defaults");
    let plan = config.server.memory(config.database.pool_size);
    assert_eq!(plan.budget_bytes, 64 << 20);
    assert_eq!(plan, MemoryPlan::new(64 << 20, 8));
    assert!(plan.sqlite_cache_total() <= 16 << 20);
}

#[test]
fn an_invalid_budget_is_refused_naming_the_key() {
    for (budget, problem) in [
        ("lots", "not a size"),
        ("64 parsecs", "unknown unit"),
        ("1MiB", "at least 16MiB"),
    ] {
        let error = config(
            &format!("[server]\nmemory_budget = \"{budget}\""),
            "sqlite://x.db",
        )
        .err()
        .unwrap_or_else(|| panic!("{budget} was accepted"));
        let text = error.to_string();
        assert!(text.contains("server.memory_budget"), "{budget}: {text}");
        assert!(text.contains(problem), "{budget}: {text}");
    }
    // Too many connections for the budget: the message says what to change.
    let Err(error) = config(
        "pool_size = 100\n[server]\nmemory_budget = \"16MiB\"",
        "sqlite://x.db",
    ) else {
        panic!("a 16MiB budget over 102 connections was accepted");
    };
    let text = error.to_string();
    assert!(
        text.contains("server.memory_budget") && text.contains("database.pool_size"),
        "{text}"
    );
    assert_eq!(parse_byte_size("512 KiB"), Ok(512 << 10));
    assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_byte_size("65536"), Ok(65536));
}
