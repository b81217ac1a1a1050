//! Listeners split across processes (`serve --listeners`): two real server processes share
//! one PostgreSQL database, each running some of the forwarder listeners, and together run
//! every listener exactly once per event, also when one is killed mid-load and restarted.
//! Also: the "run by no live process" report of `/health`, and the start-up errors.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use diesel::prelude::*;
use serde_json::{Value, json};
use zulip_listeners::db::{DbConnection, tables};
use zulip_listeners::server::ServeOptions;
use zulip_listeners::verification::SigningKey;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LISTENERS: [&str; 3] = ["message_logger", "user_activity_tracker", "keyword_alerts"];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn pg() -> Option<TestDatabase> {
    if std::env::var(PG_ENV).is_ok_and(|v| !v.is_empty()) {
        Some(TestDatabase::new(Backend::Postgres))
    } else {
        eprintln!("note: {PG_ENV} is not set; this PostgreSQL-only test is skipped");
        None
    }
}

fn envelope(event_id: &str, event: Value) -> Value {
    json!({
        "v": 1,
        "event_id": event_id,
        "emitted_at_ms": now() * 1000,
        "server": {"host": "chat.example.com", "zulip_version": "10.2", "feature_level": 334},
        "realm": {"id": 2, "uuid": "6a9b5f2e-7c1d-4e2b-9a43-0f7e1c2d3b4a", "string_id": "acme"},
        "type": "message",
        "op": null,
        "audience": {"count": 2, "user_ids": [10, 11]},
        "event": event
    })
}

fn message(id: i64, sender: i64) -> Value {
    json!({"type": "message", "flags": [], "message": {
        "id": id, "sender_id": sender, "sender_full_name": format!("User {sender}"),
        "sender_email": format!("user{sender}@acme.example.com"), "sender_realm_str": "acme",
        "avatar_url": null, "client": "website", "content": "alpha beta", "content_type": "text/x-markdown",
        "rendered_content": "<p>alpha beta</p>", "is_me_message": false, "reactions": [],
        "submessages": [], "recipient_id": 20, "subject": "greetings", "topic_links": [],
        "timestamp": 1700000000, "type": "stream", "display_recipient": "Denmark", "stream_id": 5}})
}

/// Posts one signed batch of `n` messages with ids from `first`; `true` once acknowledged.
async fn post(http: &reqwest::Client, base: &str, first: i64, n: i64) -> bool {
    let envelopes: Vec<Value> = (first..first + n)
        .map(|id| envelope(&format!("s{id}"), message(id, 40 + id % 4)))
        .collect();
    let body = json!({ "events": envelopes }).to_string();
    let webhook_id = format!("msg_split_{first}");
    let ts = now();
    let key = SigningKey::parse(SECRET).expect("key");
    http.post(format!("{base}/zulip/events"))
        .header("content-type", "application/json")
        .header("webhook-id", &webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            key.sign(&webhook_id, ts, body.as_bytes()),
        )
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn server_config(
    dir: &std::path::Path,
    name: &str,
    db: &TestDatabase,
    alerts: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "# process {name}\n[database]\nurl = \"{}\"\npool_size = 4\n\
             [forwarder]\nsecrets = [\"{SECRET}\"]\nworkers = 2\nclaim_lease = \"2s\"\n\
             retry_delay = \"200ms\"\nmax_retries = 20\n\
             handlers = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
             [handlers.keyword_alerts]\nrules = [{{ name = \"alpha\", pattern = \"alpha\", webhook = \"{alerts}/alert\" }}]\n",
            db.url
        ),
    )
    .expect("config");
    path
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

fn count_of(c: &mut DbConnection, status: &str) -> i64 {
    tables::inbox::inbox_counts(c)
        .expect("counts")
        .iter()
        .find(|(s, _)| s.as_str() == status)
        .map_or(0, |(_, n)| *n)
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
        last = (count_of(c, "done"), count_of(c, "pending"));
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
    let Some(db) = pg() else { return };
    // A slow alert target keeps keyword_alerts work in flight when its process is killed.
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(30)).await;
    let dir = tempfile::tempdir().expect("dir");
    let config_a = server_config(dir.path(), "a", &db, &alerts.url);
    let config_b = server_config(dir.path(), "b", &db, &alerts.url);
    let a = ServerProcess::start_with_args(
        &config_a,
        &["--listeners", "message_logger,user_activity_tracker"],
    )
    .await;
    let mut b = ServerProcess::start_with_args(&config_b, &["--listeners", "keyword_alerts"]).await;
    let http = reqwest::Client::new();

    // Phase 1: batches to both processes, alternately.
    let mut acked = Vec::new();
    for i in 0..10 {
        let first = 1000 + i * 20;
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        assert!(post(&http, base, first, 20).await, "batch {i} acknowledged");
        acked.extend(first..first + 20);
    }
    let target = zulip_listeners::config::parse_database_url(&db.url).expect("url");
    let mut conn = zulip_listeners::db::establish(&target).expect("connect");
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
        count_of(&mut conn, "pending") > 0,
        "the kill left work undone"
    );
    drop(b);
    let b = ServerProcess::start_with_args(&config_b, &["--listeners", "keyword_alerts"]).await;
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

async fn health(t: &TestServer) -> Value {
    let answer = t.send(t.http.get(format!("{}/health", t.base))).await;
    answer.json
}

#[actix_web::test]
async fn health_names_a_listener_no_live_process_runs() {
    let Some(db) = pg() else { return };
    let extra = format!(
        "[forwarder]\nsecrets = [\"{SECRET}\"]\nhandlers = [\"message_logger\", \"user_activity_tracker\"]\n"
    );
    let options = |listeners: &str| ServeOptions {
        listeners: Some(vec![listeners.to_string()]),
        ..Default::default()
    };
    let first = start_with(config_for(&db, &extra), options("message_logger")).await;
    let reason = "listener `user_activity_tracker` is run by no live process";
    // Reported from the first heartbeat on (at start-up).
    let mut body = Value::Null;
    let reported = eventually(Duration::from_secs(10), async || {
        body = health(&first).await;
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
    let second = start_with(config_for(&db, &extra), options("user_activity_tracker")).await;
    let mut last = Value::Null;
    let cleared = eventually(Duration::from_secs(20), async || {
        last = health(&first).await;
        last["status"] == "ok"
    })
    .await;
    assert!(cleared, "{last}");
    second.stop().await;
    first.stop().await;
}

#[actix_web::test]
async fn listeners_option_errors_name_the_problem() {
    let extra = format!(
        "[forwarder]\nsecrets = [\"{SECRET}\"]\nhandlers = [\"message_logger\", \"user_activity_tracker\"]\n"
    );
    let mut cases = vec![(Backend::Sqlite, "message_logger", "needs PostgreSQL")];
    if std::env::var(PG_ENV).is_ok_and(|v| !v.is_empty()) {
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
        let error = match zulip_listeners::server::start(config_for(&db, &extra), options).await {
            Ok(_) => panic!("{backend:?}: --listeners {listeners} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(expected), "{backend:?}: {error}");
    }
}

/// An event that never had work (stored `expired`, not dispatched) gets a `'*'` work row when
/// replayed, expanded by the sweeper into one row per listener that wants it: each runs it
/// once. Rows in progress when the work table was created take the same path.
#[actix_web::test]
async fn a_replayed_event_without_work_runs_every_listener_once() {
    const ADMIN: &str = "admin-token-for-split-tests-0123456789";
    for backend in backends() {
        let db = TestDatabase::new(backend);
        let extra = format!(
            "[admin]\ntoken = \"{ADMIN}\"\n[forwarder]\nsecrets = [\"{SECRET}\"]\n\
             handlers = [\"message_logger\", \"user_activity_tracker\"]\n"
        );
        let t = start_server(&db, &extra).await;
        let mut old = envelope("x1", message(9001, 40));
        old["emitted_at_ms"] = json!((now() - 3 * 86_400) * 1000);
        let body = json!({ "events": [old] }).to_string();
        let key = SigningKey::parse(SECRET).expect("key");
        let ts = now();
        let answer = t
            .send(
                t.http
                    .post(format!("{}/zulip/events", t.base))
                    .header("content-type", "application/json")
                    .header("webhook-id", "msg_expired")
                    .header("webhook-timestamp", ts.to_string())
                    .header(
                        "webhook-signature",
                        key.sign("msg_expired", ts, body.as_bytes()),
                    )
                    .body(body),
            )
            .await;
        assert_eq!(answer.json["expired"], 1, "{backend:?}: {:?}", answer.json);
        let replayed = t
            .send(
                t.http
                    .post(format!("{}/admin/dead-letters/replay", t.base))
                    .bearer_auth(ADMIN)
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
            t.query(|c| count_of(c, "done")).await == 1
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
}
