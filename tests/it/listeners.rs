//! Listeners: named instances of one handler with their own scopes, changed at runtime
//! through the admin API and the CLI (validated, stored, surviving restarts, followed by
//! other servers sharing the database, recorded in history), with statistics per listener.
//!
//! Long file: the listener lifecycle (admin API, CLI, other servers, quotas), one scenario per test, read best together.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use zulip_listeners::http::api::{ListenerChanged, ListenerList};

/// The bot `helper` running two `keyword_alerts` listeners, one per channel, each alerting
/// its own stub; with the admin API.
fn app(db: &TestDatabase, eng: &Stub, ops: &Stub) -> TestApp {
    TestApp::new(db)
        .admin()
        .helper(&["alerts-eng", "alerts-ops"])
        .deploy_alerts(
            "alerts-eng",
            "description = \"Deploy talk in #engineering\"\nevents = [\"message\"]\nstreams = [\"Engineering\"]\n",
            &format!("{}/eng", eng.url),
        )
        .deploy_alerts("alerts-ops", "streams = [42]\n", &format!("{}/ops", ops.url))
}

/// An outgoing webhook for a message in a channel.
fn message(id: i64, channel: &str, stream_id: i64) -> String {
    let mut body = mention_json(id, "@**Helper** deploy at noon");
    body["message"]["display_recipient"] = json!(channel);
    body["message"]["stream_id"] = json!(stream_id);
    body["message"]["subject"] = json!("release");
    body.to_string()
}

async fn admin(t: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
    let mut request = t.admin(method, path);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    t.send(request).await
}

async fn patch(t: &TestServer, name: &str, body: Value) -> Answer {
    admin(
        t,
        reqwest::Method::PATCH,
        &format!("/admin/listeners/{name}"),
        Some(body),
    )
    .await
}

/// Sends a message and waits until the stubs have seen `eng` and `ops` alerts in all.
async fn alerts_after(
    t: &TestServer,
    id: i64,
    channel: &str,
    stream_id: i64,
    eng: &Stub,
    ops: &Stub,
) -> (usize, usize) {
    let answer = t
        .post_json("/zulip/outgoing", &message(id, channel, stream_id))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    t.server.flush().await;
    // Alerts go out on the handler's own task; give them a moment, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.server.flush().await;
    (eng.requests().len(), ops.requests().len())
}

backend_test!(async fn two_listeners_of_one_handler_keep_their_scopes_and_change_at_runtime);
async fn two_listeners_of_one_handler_keep_their_scopes_and_change_at_runtime(backend: Backend) {
    let eng = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let ops = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let db = TestDatabase::new(backend);
    let t = app(&db, &eng, &ops).start().await;

    // Scope by channel name (any case) for one, by channel id for the other.
    assert_eq!(
        alerts_after(&t, 101, "engineering", 7, &eng, &ops).await,
        (1, 0),
        "{backend:?}"
    );
    assert_eq!(
        alerts_after(&t, 102, "ops", 42, &eng, &ops).await,
        (1, 1),
        "{backend:?}"
    );
    assert_eq!(
        alerts_after(&t, 103, "random", 9, &eng, &ops).await,
        (1, 1),
        "{backend:?}"
    );

    // Widen alerts-eng to #ops as well: applies at once, without a restart.
    let changed = patch(
        &t,
        "alerts-eng",
        json!({"streams": ["engineering", 42], "description": "Deploys"}),
    )
    .await;
    assert_eq!(changed.status, 200, "{:?}", changed.json);
    let changed: ListenerChanged = serde_json::from_value(changed.json).expect("a change");
    assert_eq!(changed.changed, ["description", "streams"]);
    assert_eq!(changed.listener.overridden, ["description", "streams"]);
    assert_eq!(
        alerts_after(&t, 104, "ops", 42, &eng, &ops).await,
        (2, 2),
        "{backend:?}"
    );

    // Invalid changes: 400 naming the field, nothing stored.
    for (body, field) in [
        (json!({"streams": ["eng", true]}), "streams[1]"),
        (json!({"events": ["presence"]}), "events[0]"),
        (json!({"settings": {"bogus": 1}}), "settings.bogus"),
        (
            json!({"settings": {"rules": [{"name": "x", "pattern": "("}]}}),
            "settings.rules[0]",
        ),
        (json!({"handler": "relay"}), "handler"),
        (json!({"enabled": "yes"}), "enabled"),
        (json!({}), ""),
    ] {
        let refused = patch(&t, "alerts-eng", body.clone()).await;
        assert_eq!(refused.status, 400, "{body}: {:?}", refused.json);
        assert_eq!(refused.json["error"], "invalid_field", "{body}");
        assert!(
            refused.json["field"]
                .as_str()
                .is_some_and(|f| f.starts_with(field)),
            "{body}: {:?}",
            refused.json
        );
    }
    let not_json = t
        .send(
            t.admin(reqwest::Method::PATCH, "/admin/listeners/alerts-eng")
                .body("{streams"),
        )
        .await;
    assert_eq!(not_json.status, 400);
    assert_eq!(
        patch(&t, "nope", json!({"enabled": false})).await.status,
        404
    );
    let unauthorised = t
        .send(
            t.http
                .patch(format!("{}/admin/listeners/alerts-eng", t.base))
                .body("{}"),
        )
        .await;
    assert_eq!(unauthorised.status, 401);

    // Statistics and history.
    let shown = admin(
        &t,
        reqwest::Method::GET,
        "/admin/listeners/alerts-eng",
        None,
    )
    .await;
    assert_eq!(shown.status, 200);
    let view = &shown.json;
    assert_eq!(view["handler"], "keyword_alerts");
    assert_eq!(view["description"], "Deploys");
    assert_eq!(view["streams"], json!(["engineering", 42]));
    assert_eq!(view["used_by"], json!(["bot:helper"]));
    let stats = &view["stats"];
    assert_eq!(stats["runs"], 2, "{backend:?}: runs of alerts-eng: {stats}");
    assert_eq!(stats["failures"], 0);
    assert_eq!(stats["success_rate"], 1.0);
    assert!(stats["p95_duration_ms"].as_f64().is_some(), "{stats}");
    assert!(stats["last_run_at_ms"].as_i64().is_some(), "{stats}");
    let history = view["history"].as_array().expect("history");
    let fields: Vec<&str> = history.iter().filter_map(|h| h["field"].as_str()).collect();
    assert_eq!(
        fields,
        vec!["streams", "description"],
        "newest first (one change, id order)"
    );
    let streams = &history[0];
    assert_eq!(streams["source"], "admin API");
    assert_eq!(streams["old_value"], r#"["Engineering"]"#);
    assert_eq!(streams["new_value"], r#"["engineering",42]"#);
    let ops_view = admin(
        &t,
        reqwest::Method::GET,
        "/admin/listeners/alerts-ops",
        None,
    )
    .await;
    assert_eq!(
        ops_view.json["stats"]["runs"], 2,
        "alerts-ops ran for #ops only"
    );

    // Disabled through the shorthand, the same change with its history.
    let off = admin(
        &t,
        reqwest::Method::POST,
        "/admin/listeners/alerts-ops/disable",
        None,
    )
    .await;
    assert_eq!(
        (off.status, &off.json["state"]),
        (200, &json!(ListenerState::Disabled))
    );
    assert_eq!(
        alerts_after(&t, 105, "ops", 42, &eng, &ops).await,
        (3, 2),
        "{backend:?}"
    );
    t.stop().await;

    // Survives a restart: the database wins over the file.
    let t = app(&db, &eng, &ops).start().await;
    assert_eq!(
        alerts_after(&t, 106, "ops", 42, &eng, &ops).await,
        (4, 2),
        "{backend:?}"
    );
    let list = admin(&t, reqwest::Method::GET, "/admin/listeners", None).await;
    let list: ListenerList = serde_json::from_value(list.json).expect("a listener list");
    let names: Vec<&str> = list
        .listeners
        .iter()
        .map(|l| l.listener.name.as_str())
        .collect();
    assert!(
        names.contains(&"alerts-eng") && names.contains(&"keyword_alerts"),
        "{names:?}"
    );
    // A settings key set to null goes back to the file's value.
    let on = patch(
        &t,
        "alerts-ops",
        json!({"enabled": true, "settings": {"timeout": "2s"}}),
    )
    .await;
    assert_eq!(on.status, 200, "{:?}", on.json);
    assert_eq!(on.json["settings"]["timeout"], "2s");
    let back = patch(&t, "alerts-ops", json!({"settings": {"timeout": null}})).await;
    assert!(
        back.json["settings"].get("timeout").is_none(),
        "{:?}",
        back.json
    );
    assert_eq!(
        alerts_after(&t, 107, "ops", 42, &eng, &ops).await,
        (5, 3),
        "{backend:?}"
    );
    t.stop().await;
    eng.stop().await;
    ops.stop().await;
}

backend_test!(async fn the_cli_changes_listeners_and_a_running_server_follows);
async fn the_cli_changes_listeners_and_a_running_server_follows(backend: Backend) {
    let eng = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let ops = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let db = TestDatabase::new(backend);
    let app = app(&db, &eng, &ops);
    let config = app.config_file();
    let file = &config.path;
    let t = app.start().await;

    let said = cli(
        file,
        &[
            "listeners",
            "set",
            "alerts-ops",
            "--streams",
            "42,ops",
            "--setting",
            "timeout=\"3s\"",
        ],
    );
    assert!(
        said.contains("alerts-ops: streams [42] -> [42,\"ops\"]"),
        "{said}"
    );
    let said = cli(file, &["listeners", "set", "alerts-eng", "--streams", ""]);
    assert!(said.contains("streams"), "{said}");
    // Unscoped now: alerts-eng sees #random too, once the server has read the change.
    let mut next = 200;
    let followed = eventually(Duration::from_secs(10), async || {
        next += 1;
        let before = eng.requests().len();
        alerts_after(&t, next, "random", 9, &eng, &ops).await.0 > before
    })
    .await;
    assert!(
        followed,
        "{backend:?}: the running server applied the CLI change"
    );

    let shown: Value =
        serde_json::from_str(&cli(file, &["listeners", "show", "alerts-ops", "--json"]))
            .expect("JSON");
    assert_eq!(shown["streams"], json!([42, "ops"]));
    assert_eq!(shown["settings"]["timeout"], "3s");
    let sources: Vec<&str> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["source"].as_str())
        .collect();
    assert!(
        sources.iter().all(|s| *s == "CLI") && !sources.is_empty(),
        "{sources:?}"
    );
    let text = cli(file, &["listeners", "show", "alerts-ops"]);
    assert!(
        text.contains("history (newest first):") && text.contains("CLI"),
        "{text}"
    );
    let table = cli(file, &["listeners"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alerts-ops") && l.contains("streams: 42 ops")),
        "{table}"
    );

    // Per-interval statistics: aggregate as if the current interval had ended.
    t.server.flush().await;
    let mut conn = db.connect();
    let later = zulip_listeners::clock::now_ms() + 600_000;
    zulip_listeners::db::tables::listener_stats::aggregate_stats(&mut conn, 300_000, later)
        .expect("aggregate");
    let intervals: Value = serde_json::from_str(&cli(
        file,
        &["stats", "show", "--listener", "alerts-eng", "--json"],
    ))
    .expect("JSON");
    let intervals = intervals.as_array().expect("rows");
    assert!(
        !intervals.is_empty()
            && intervals
                .iter()
                .all(|r| r["listener"] == "alerts-eng" && r["handler"] == r["listener"]),
        "{intervals:?}"
    );
    let table = cli(file, &["stats", "show", "--listener", "alerts-eng"]);
    assert!(
        table.starts_with("interval start") && table.contains("alerts-eng"),
        "{table}"
    );

    // Invalid changes are refused with the field named, and change nothing.
    let (ok, said) = cli_status(
        file,
        &["listeners", "set", "alerts-ops", "--events", "presence"],
    );
    assert!(!ok && said.contains("events[0]"), "{said}");
    let (ok, said) = cli_status(file, &["listeners", "set", "nope", "--description", "x"]);
    assert!(!ok && said.contains("no listener named `nope`"), "{said}");
    t.stop().await;
    eng.stop().await;
    ops.stop().await;
}

/// PostgreSQL only.
#[actix_web::test]
async fn servers_sharing_a_database_follow_each_others_changes() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let eng = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let ops = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let first = app(&db, &eng, &ops).start().await;
    let second = app(&db, &eng, &ops).start().await;
    let changed = patch(&first, "alerts-ops", json!({"streams": ["random"]})).await;
    assert_eq!(changed.status, 200);
    let started = std::time::Instant::now();
    let followed = eventually(Duration::from_secs(10), async || {
        let view = admin(
            &second,
            reqwest::Method::GET,
            "/admin/listeners/alerts-ops",
            None,
        )
        .await;
        view.json["streams"] == json!(["random"])
    })
    .await;
    assert!(followed, "the second server applied the change within 10 s");
    eprintln!("followed after {:?}", started.elapsed());
    assert_eq!(
        alerts_after(&second, 301, "random", 9, &eng, &ops).await,
        (0, 1)
    );
    first.stop().await;
    second.stop().await;
}

backend_test!(async fn a_listener_over_its_own_quota_is_skipped_alone);
async fn a_listener_over_its_own_quota_is_skipped_alone(backend: Backend) {
    let hook = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .admin()
        .helper(&["quiet-alerts", "message_logger"])
        .deploy_alerts(
            "quiet-alerts",
            "rate_limits = { per_user = { per_minute = 1, burst = 1 } }\n",
            &format!("{}/hook", hook.url),
        )
        .start()
        .await;
    for id in 401..=403 {
        let answer = t
            .post_json("/zulip/outgoing", &message(id, "ops", 42))
            .await;
        assert_eq!(answer.status, 200);
    }
    t.server.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.server.flush().await;
    assert_eq!(
        hook.requests().len(),
        1,
        "{backend:?}: one alert within the quota"
    );
    // The bookkeeping listener has no quota: it stored every message.
    let stored = t
        .query(|c| {
            (401..=403)
                .filter(|id| {
                    zulip_listeners::db::tables::messages::message_by_id(c, *id)
                        .ok()
                        .flatten()
                        .is_some()
                })
                .count()
        })
        .await;
    assert_eq!(stored, 3, "{backend:?}");
    let view = admin(
        &t,
        reqwest::Method::GET,
        "/admin/listeners/quiet-alerts",
        None,
    )
    .await;
    let stats = &view.json["stats"];
    assert_eq!(
        (&stats["runs"], &stats["failures"], &stats["rate_limited"]),
        (&json!(1), &json!(0), &json!(2)),
        "{backend:?}: {stats}"
    );
    let page = admin(
        &t,
        reqwest::Method::GET,
        "/admin/events?listener=quiet-alerts&success=false",
        None,
    )
    .await;
    let skipped = page.json["events"].as_array().expect("events");
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped.iter().all(|e| e["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("rate_limited: "))),
        "{skipped:?}"
    );
    t.stop().await;
    hook.stop().await;
}

/// A forwarded message from user 10 in #ops.
fn forwarded(event_id: &str, message_id: i64) -> Value {
    let event = channel_message(message_id, 10, "deploy now", ("ops", 42, "ci"));
    Envelope::new(event_id, event).audience(&[10]).json()
}

backend_test!(async fn a_forwarded_event_over_a_listener_quota_is_set_aside_and_replayable_for_it_alone);
async fn a_forwarded_event_over_a_listener_quota_is_set_aside_and_replayable_for_it_alone(
    backend: Backend,
) {
    let hook = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .admin()
        .forwarder()
        .toml("[forwarder]\nlisteners = [\"quiet-alerts\", \"message_logger\"]\nworkers = 1\n")
        .deploy_alerts(
            "quiet-alerts",
            "rate_limits = { per_user = { per_minute = 60, burst = 1 } }\n",
            &format!("{}/hook", hook.url),
        )
        .start()
        .await;
    let sent = t
        .post_events("msg_q", vec![forwarded("q1", 501), forwarded("q2", 502)])
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.json);
    // The second event is over quota for quiet-alerts only: set aside as rate_limited.
    let rate_limited = async || {
        admin(
            &t,
            reqwest::Method::GET,
            "/admin/dead-letters?status=rate_limited",
            None,
        )
        .await
        .json["events"]
            .clone()
    };
    let set_aside = eventually(Duration::from_secs(10), async || {
        rate_limited()
            .await
            .as_array()
            .is_some_and(|e| e.len() == 1 && e[0]["event_id"] == "q2")
    })
    .await;
    assert!(set_aside, "{backend:?}: q2 is rate_limited");
    assert_eq!(
        hook.requests().len(),
        1,
        "{backend:?}: one alert within the quota"
    );
    t.server.flush().await;
    let logged = t
        .query(|c| {
            zulip_listeners::db::tables::messages::message_by_id(c, 502)
                .ok()
                .flatten()
                .is_some()
        })
        .await;
    assert!(logged, "{backend:?}: message_logger ran on q2 all the same");

    // A second later the quota allows one more: the replay runs quiet-alerts alone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replay = admin(
        &t,
        reqwest::Method::POST,
        "/admin/dead-letters/replay",
        Some(json!({"ids": ["q2"], "status": "rate_limited"})),
    )
    .await;
    assert_eq!(replay.json["requeued"], 1, "{:?}", replay.json);
    let alerted = eventually(Duration::from_secs(10), async || hook.requests().len() == 2).await;
    assert!(alerted, "{backend:?}: the replay ran quiet-alerts");
    t.server.flush().await;
    let runs = t
        .query(|c| {
            let filter = zulip_listeners::db::tables::event_log::EventLogFilter {
                listener: Some("message_logger".into()),
                ..Default::default()
            };
            zulip_listeners::db::tables::event_log::event_log_page(c, &filter, 0, 100)
                .map(|rows| rows.len())
                .unwrap_or_default()
        })
        .await;
    assert_eq!(runs, 2, "{backend:?}: message_logger was not run again");
    let done = eventually(Duration::from_secs(10), async || {
        rate_limited()
            .await
            .as_array()
            .is_some_and(|e| e.is_empty())
    })
    .await;
    assert!(done, "{backend:?}: nothing is left rate_limited");
    t.stop().await;
    hook.stop().await;
}
