//! Listeners split across processes (`serve --listeners`): two real server processes share
//! one PostgreSQL database, each running some of the forwarder listeners, and together run
//! every listener exactly once per event, also when one is killed mid-load and restarted.
//! Also: the "run by no live process" report of `/health`, and the start-up errors.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::*;
use diesel::prelude::*;
use serde_json::Value;
use zulip_listeners::db::{DbConnection, tables};
use zulip_listeners::server::ServeOptions;

const LISTENERS: [&str; 3] = ["message_logger", "user_activity_tracker", "keyword_alerts"];

/// Posts one signed batch of `n` messages with ids from `first`; `true` once acknowledged.
async fn post(http: &reqwest::Client, base: &str, first: i64, n: i64) -> bool {
    let envelopes: Vec<Value> = (first..first + n)
        .map(|id| envelope(&format!("s{id}"), message(id, 40 + id % 4, "alpha beta")))
        .collect();
    let webhook_id = format!("msg_split_{first}");
    signed_events(http, base, &webhook_id, now_s(), &batch(envelopes), SECRET)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The configuration of one of the processes sharing `db`.
fn server_config(db: &TestDatabase, alerts: &str) -> ConfigFile {
    db.config_file(&format!(
        "pool_size = 4\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\nworkers = 2\nclaim_lease = \"2s\"\n\
         retry_delay = \"200ms\"\nmax_retries = 20\n\
         listeners = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
         [handlers.keyword_alerts]\nrules = [{{ name = \"alpha\", pattern = \"alpha\", webhook = \"{alerts}/alert\" }}]\n"
    ))
}

/// Successful event-log runs per (event id, listener).
fn runs(c: &mut DbConnection) -> HashMap<(String, String), i64> {
    use zulip_listeners::db::schema::event_log as log;
    let rows: Vec<(Option<String>, String)> = log::table
        .filter(log::success.eq(true))
        .select((log::event_id, log::listener))
        .load(c)
        .expect("event log");
    let mut counts = HashMap::new();
    for (event_id, handler) in rows {
        *counts
            .entry((event_id.unwrap_or_default(), handler))
            .or_insert(0) += 1;
    }
    counts
}

/// Every acknowledged message was run exactly once by each listener: one successful
/// event-log row per (event, listener), one stored message and one alert record each, and
/// activity counted once per message.
fn assert_exactly_once(c: &mut DbConnection, acked: &[i64], phase: &str) {
    use zulip_listeners::db::schema::{inbox_work, keyword_alerts, messages};
    let runs = runs(c);
    for id in acked {
        for listener in LISTENERS {
            let n = runs
                .get(&(format!("s{id}"), listener.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(n, 1, "{phase}: event s{id} run {n} times by {listener}");
        }
    }
    let stored: i64 = messages::table.count().get_result(c).expect("count");
    let alerted: i64 = keyword_alerts::table.count().get_result(c).expect("count");
    let work_left: i64 = inbox_work::table.count().get_result(c).expect("count");
    assert_eq!(
        (stored, alerted, work_left),
        (acked.len() as i64, acked.len() as i64, 0),
        "{phase}: messages, alert records, work rows left"
    );
    let mut expected: HashMap<i64, i64> = HashMap::new();
    for id in acked {
        *expected.entry(40 + id % 4).or_insert(0) += 1;
    }
    for (user, n) in expected {
        let activity = tables::user_activity::activity_of(c, 2, user)
            .expect("q")
            .expect("user");
        assert_eq!(activity.message_count, n, "{phase}: user {user}");
    }
}

async fn wait_all_done(c: &mut DbConnection, total: i64, phase: &str) {
    let mut last = (0, 0);
    let done = eventually(Duration::from_secs(90), async || {
        last = (
            inbox_count(c, InboxStatus::Done),
            inbox_count(c, InboxStatus::Pending),
        );
        last.0 == total
    })
    .await;
    assert!(
        done,
        "{phase}: (done, pending) = {last:?}, expected {total} done"
    );
}

#[actix_web::test]
async fn two_processes_run_every_listener_exactly_once_across_a_kill() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    // A slow alert target keeps keyword_alerts work in flight when its process is killed.
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(30)).await;
    let config_a = server_config(&db, &alerts.url);
    let config_b = server_config(&db, &alerts.url);
    let a = ServerProcess::start_with_args(
        &config_a.path,
        &["--listeners", "message_logger,user_activity_tracker"],
    )
    .await;
    let mut b =
        ServerProcess::start_with_args(&config_b.path, &["--listeners", "keyword_alerts"]).await;
    let http = reqwest::Client::new();

    // Phase 1: batches to both processes, alternately.
    let mut acked = Vec::new();
    for i in 0..10 {
        let first = 1000 + i * 20;
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        assert!(post(&http, base, first, 20).await, "batch {i} acknowledged");
        acked.extend(first..first + 20);
    }
    let mut conn = db.connect();
    wait_all_done(&mut conn, acked.len() as i64, "phase 1").await;
    assert_exactly_once(&mut conn, &acked, "phase 1");
    // No crash: every alert was delivered exactly once too.
    let delivered = alerts.requests().len();
    assert_eq!(delivered, acked.len(), "phase 1: alert deliveries");

    // Phase 2: load on both; the keyword_alerts process is killed mid-load, restarted.
    let mut sent = 0;
    for i in 0..16 {
        let first = 5000 + i * 20;
        if i == 8 {
            b.child.kill().expect("SIGKILL");
            b.child.wait().expect("reaped");
        }
        let base = if i % 2 == 0 || i >= 8 {
            &a.base
        } else {
            &b.base
        };
        if post(&http, base, first, 20).await {
            acked.extend(first..first + 20);
        }
        sent += 1;
    }
    assert_eq!(sent, 16);
    // Work of the killed process waits (claims run out after the lease), and its listener is
    // reported as run by no live process, until it is back.
    assert!(
        inbox_count(&mut conn, InboxStatus::Pending) > 0,
        "the kill left work undone"
    );
    drop(b);
    let b =
        ServerProcess::start_with_args(&config_b.path, &["--listeners", "keyword_alerts"]).await;
    wait_all_done(&mut conn, acked.len() as i64, "phase 2").await;
    assert_exactly_once(&mut conn, &acked, "phase 2");
    // Deliveries may repeat only for an alert sent just before the kill; each was sent.
    let ids: HashSet<i64> = alerts
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter_map(|v| v["message"]["id"].as_i64())
        .collect();
    assert!(acked.iter().all(|id| ids.contains(id)), "every alert sent");
    drop(conn);
    drop(a);
    drop(b);
    alerts.stop().await;
}

#[actix_web::test]
async fn health_names_a_listener_no_live_process_runs() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let process = |listeners: &str| {
        TestApp::new(&db)
            .forwarder()
            .toml("[forwarder]\nlisteners = [\"message_logger\", \"user_activity_tracker\"]\n")
            .options(ServeOptions {
                listeners: Some(vec![listeners.to_string()]),
                ..Default::default()
            })
    };
    let first = process("message_logger").start().await;
    let reason = "listener `user_activity_tracker` is run by no live process";
    // Reported from the first heartbeat on (at start-up).
    let mut body = Value::Null;
    let reported = eventually(Duration::from_secs(10), async || {
        body = first.health().await.json;
        body["status"] == "degraded"
            && body["reasons"].as_array().is_some_and(|reasons| {
                reasons
                    .iter()
                    .any(|r| r.as_str().is_some_and(|r| r.contains(reason)))
            })
    })
    .await;
    assert!(reported, "{body}");
    // A second process that runs it: the reason goes away within a heartbeat or two.
    let second = process("user_activity_tracker").start().await;
    let mut last = Value::Null;
    let cleared = eventually(Duration::from_secs(20), async || {
        last = first.health().await.json;
        last["status"] == "ok"
    })
    .await;
    assert!(cleared, "{last}");
    second.stop().await;
    first.stop().await;
}

#[actix_web::test]
async fn listeners_option_errors_name_the_problem() {
    let mut cases = vec![(Backend::Sqlite, "message_logger", "needs PostgreSQL")];
    if postgres_enabled() {
        cases.push((Backend::Postgres, "message_loger", "`message_loger`"));
        // Known, but not a forwarder listener in this configuration.
        cases.push((Backend::Postgres, "keyword_alerts", "`keyword_alerts`"));
    }
    for (backend, listeners, expected) in cases {
        let db = TestDatabase::new(backend);
        let options = ServeOptions {
            listeners: Some(vec![listeners.to_string()]),
            ..Default::default()
        };
        let config = TestApp::new(&db)
            .forwarder()
            .toml("[forwarder]\nlisteners = [\"message_logger\", \"user_activity_tracker\"]\n")
            .config();
        let error = match zulip_listeners::server::start(config, options).await {
            Ok(_) => panic!("{backend:?}: --listeners {listeners} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(expected), "{backend:?}: {error}");
    }
}

backend_test!(async fn a_replayed_event_without_work_runs_every_listener_once);
/// An event that never had work (stored `expired`, not dispatched) gets a `'*'` work row when
/// replayed, expanded by the sweeper into one row per listener that wants it: each runs it
/// once. Rows in progress when the work table was created take the same path.
async fn a_replayed_event_without_work_runs_every_listener_once(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .admin()
        .forwarder()
        .toml("[forwarder]\nlisteners = [\"message_logger\", \"user_activity_tracker\"]\n")
        .start()
        .await;
    let old = Envelope::new("x1", message(9001, 40, "alpha beta"))
        .emitted_at_ms((now_s() - 3 * 86_400) * 1000)
        .json();
    let answer = t.post_events("msg_expired", vec![old]).await;
    assert_eq!(answer.json["expired"], 1, "{backend:?}: {:?}", answer.json);
    let replayed = t
        .send(
            t.admin(reqwest::Method::POST, "/admin/dead-letters/replay")
                .header("content-type", "application/json")
                .body(r#"{"all": true, "status": "expired"}"#),
        )
        .await;
    assert_eq!(
        replayed.json["requeued"], 1,
        "{backend:?}: {:?}",
        replayed.json
    );
    let done = eventually(Duration::from_secs(15), async || {
        t.query(|c| inbox_count(c, InboxStatus::Done)).await == 1
    })
    .await;
    assert!(done, "{backend:?}: replayed event processed");
    let runs = t.query(runs).await;
    for listener in ["message_logger", "user_activity_tracker"] {
        assert_eq!(
            runs.get(&("x1".to_string(), listener.to_string())),
            Some(&1),
            "{backend:?}: {runs:?}"
        );
    }
    let work_left: i64 = t
        .query(|c| {
            use zulip_listeners::db::schema::inbox_work;
            inbox_work::table.count().get_result(c).expect("count")
        })
        .await;
    assert_eq!(work_left, 0, "{backend:?}");
    t.stop().await;
}
