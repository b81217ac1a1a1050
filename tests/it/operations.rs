//! Running it in production: health, metrics, the admin API, circuit breakers and
//! auto-disable, graceful shutdown, and log files reopened on SIGHUP.
//!
//! Long file: the operator's runtime controls (health, metrics, admin API, breakers, signals, CLI), one scenario per test, read best together.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use zulip_listeners::db::tables;
use zulip_listeners::db::tables::inbox::InboxStatus;
use zulip_listeners::http::api::Stats;

async fn admin(t: &TestServer, method: reqwest::Method, path: &str, token: Option<&str>) -> Answer {
    let mut request = t.http.request(method, t.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    t.send(request).await
}

#[actix_web::test]
async fn health_and_readiness() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db).start().await;
    let live = t.send(t.http.get(format!("{}/healthz", t.base))).await;
    assert_eq!(
        (live.status, live.json["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = t.send(t.http.get(format!("{}/readyz", t.base))).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["database"], "ok");
    assert_eq!(ready.json["accepting"], true);
    assert!(ready.json["listeners"].as_u64().unwrap_or_default() >= 4);
    // The deprecated name of the count, until it is removed (docs/deprecations.md).
    assert_eq!(ready.json["handlers"], ready.json["listeners"]);
    t.stop().await;
}

#[actix_web::test]
async fn metrics_are_prometheus_text() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["command_bot"])
        .forwarder()
        .start()
        .await;
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(1)).await.json["content"],
        "pong"
    );
    let answer = t
        .post_events("msg_m", vec![broken_build("m1", 501, 10)])
        .await;
    assert_eq!(answer.status, 200);
    let mut scrape = None;
    let found = eventually(Duration::from_secs(10), async || {
        let text = t.metrics().await;
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
        let has = |name: &str| parsed.samples.iter().any(|s| s.metric == name);
        let ready =
            has("zulip_listeners_listener_runs_total") && has("zulip_listeners_inbox_events");
        scrape = Some(parsed);
        ready
    })
    .await;
    let scrape = scrape.expect("scraped");
    assert!(
        found,
        "metrics missing: {:?}",
        scrape.samples.iter().map(|s| &s.metric).collect::<Vec<_>>()
    );
    let sample = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .unwrap_or_else(|| panic!("no {name} with {label:?}"))
    };
    sample(
        "zulip_listeners_http_requests_total",
        ("route", "/zulip/outgoing"),
    );
    sample(
        "zulip_listeners_events_received_total",
        ("source", "forwarder"),
    );
    sample(
        "zulip_listeners_listener_runs_total",
        ("listener", "command_bot"),
    );
    let latency = sample(
        "zulip_listeners_listener_duration_seconds",
        ("listener", "command_bot"),
    );
    assert!(
        matches!(latency.value, prometheus_parse::Value::Histogram(ref buckets) if !buckets.is_empty()),
        "a histogram with buckets: {:?}",
        latency.value
    );
    sample(
        "zulip_listeners_inbox_events",
        ("status", InboxStatus::Pending.as_str()),
    );
    sample("zulip_listeners_db_pool_connections", ("state", "idle"));
    assert_deprecated_metric_names_mirror_the_listener_names(&t).await;
    t.stop().await;
}

/// The deprecated metric names (docs/deprecations.md) mirror the new ones until they are
/// removed: each `zulip_listeners_handler_*{handler}` series has the values of its
/// `zulip_listeners_listener_*{listener}` twin, and a listener series whose name was already
/// right carries both labels with one value.
async fn assert_deprecated_metric_names_mirror_the_listener_names(t: &TestServer) {
    const RENAMED: &[(&str, &str)] = &[
        (
            "zulip_listeners_listener_runs_total",
            "zulip_listeners_handler_runs_total",
        ),
        (
            "zulip_listeners_listener_duration_seconds",
            "zulip_listeners_handler_duration_seconds",
        ),
        (
            "zulip_listeners_listener_transitions_total",
            "zulip_listeners_handler_transitions_total",
        ),
        (
            "zulip_listeners_listener_enabled",
            "zulip_listeners_handler_enabled",
        ),
        (
            "zulip_listeners_listener_enabled_in_file",
            "zulip_listeners_handler_enabled_in_file",
        ),
        (
            "zulip_listeners_listener_circuit_open",
            "zulip_listeners_handler_circuit_open",
        ),
    ];
    // What a series says apart from its name and its listener label.
    type Series = (String, String, String);
    let series = |scrape: &prometheus_parse::Scrape, name: &str, label: &str| -> Vec<Series> {
        let mut found: Vec<Series> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| {
                let mut rest: Vec<String> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != label)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                rest.sort();
                let listener = s.labels.get(label).unwrap_or_default().to_string();
                (listener, rest.join(","), format!("{:?}", s.value))
            })
            .collect();
        found.sort();
        found
    };
    let mut problems = Vec::new();
    let mirrored = eventually(Duration::from_secs(10), async || {
        let text = t.metrics().await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid Prometheus text format");
        problems.clear();
        for (new, old) in RENAMED {
            let (by_new, by_old) = (
                series(&scrape, new, "listener"),
                series(&scrape, old, "handler"),
            );
            if by_new.is_empty() || by_new != by_old {
                problems.push(format!("{new} {by_new:?} against {old} {by_old:?}"));
            }
        }
        let lag = "zulip_listeners_listener_queue_lag_seconds";
        let both = scrape.samples.iter().filter(|s| s.metric == lag);
        if both.clone().count() == 0 {
            problems.push(format!("no {lag}"));
        }
        for s in both {
            if s.labels.get("listener").is_none()
                || s.labels.get("listener") != s.labels.get("handler")
            {
                problems.push(format!("{lag} labels {:?}", s.labels));
            }
        }
        problems.is_empty()
    })
    .await;
    assert!(mirrored, "{problems:#?}");
}

backend_test!(async fn admin_api_requires_its_token_and_controls_handlers);
async fn admin_api_requires_its_token_and_controls_handlers(backend: Backend) {
    let db = TestDatabase::new(backend);
    let off = TestApp::new(&db).start().await;
    let answer = admin(&off, reqwest::Method::GET, "/admin/listeners", Some(ADMIN)).await;
    assert_eq!(answer.status, 404, "off without a token");
    off.stop().await;

    let app = || TestApp::new(&db).admin().helper(&["command_bot"]);
    let t = app().start().await;
    assert_eq!(
        admin(&t, reqwest::Method::GET, "/admin/listeners", None)
            .await
            .status,
        401
    );
    assert_eq!(
        admin(&t, reqwest::Method::GET, "/admin/listeners", Some("wrong"))
            .await
            .status,
        401
    );

    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(1)).await.json["content"],
        "pong"
    );
    let list = admin(&t, reqwest::Method::GET, "/admin/listeners", Some(ADMIN)).await;
    let bot = list.json["listeners"]
        .as_array()
        .expect("list")
        .iter()
        .find(|h| h["name"] == "command_bot")
        .cloned()
        .expect("listed");
    assert_eq!(
        (bot["enabled"].as_bool(), bot["breaker"].as_str()),
        (Some(true), Some("closed"))
    );

    let off = admin(
        &t,
        reqwest::Method::POST,
        "/admin/listeners/command_bot/disable",
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (
            &off.json["name"],
            &off.json["enabled"],
            &off.json["changed"]
        ),
        (&json!("command_bot"), &json!(false), &json!(["enabled"]))
    );
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(2)).await.json,
        json!({"response_not_required": true})
    );
    t.stop().await;

    // Persisted: still disabled after a restart, until enabled again.
    let t = app().start().await;
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(3)).await.json,
        json!({"response_not_required": true})
    );
    admin(
        &t,
        reqwest::Method::POST,
        "/admin/listeners/command_bot/enable",
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(4)).await.json["content"],
        "pong"
    );

    t.server.flush().await;
    let page = admin(
        &t,
        reqwest::Method::GET,
        "/admin/events?listener=command_bot&per_page=1",
        Some(ADMIN),
    )
    .await;
    let events = page.json["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["listener"], "command_bot");
    // The deprecated spellings (docs/deprecations.md): `?handler=` filters the same, each row
    // names its listener as `handler` too, and the two parameters must not disagree.
    assert_eq!(events[0]["handler"], events[0]["listener"]);
    let old = admin(
        &t,
        reqwest::Method::GET,
        "/admin/events?handler=command_bot&per_page=1",
        Some(ADMIN),
    )
    .await;
    assert_eq!(old.json, page.json);
    let both = admin(
        &t,
        reqwest::Method::GET,
        "/admin/events?listener=command_bot&handler=relay",
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (both.status, &both.json["field"]),
        (400, &json!("handler")),
        "{:?}",
        both.json
    );
    assert_eq!(
        (
            events[0]["message_id"].as_i64(),
            events[0]["success"].as_bool()
        ),
        (Some(4), Some(true))
    );
    let stats = admin(&t, reqwest::Method::GET, "/admin/stats", Some(ADMIN)).await;
    let stats: Stats = serde_json::from_value(stats.json).expect("statistics");
    assert!(stats.runs_last_hour >= 2, "{stats:?}");
    assert!(stats.last_event_time_ms.is_some());
    assert!(stats.active_listeners.iter().any(|h| h == "command_bot"));
    assert_eq!(
        admin(
            &t,
            reqwest::Method::POST,
            "/admin/listeners/nope/disable",
            Some(ADMIN)
        )
        .await
        .status,
        404
    );
    t.stop().await;
}

#[actix_web::test]
async fn breaker_opens_keeps_events_pending_and_auto_disables() {
    let target = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let notices = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    target.set_status(500);
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .alerting_on_broken(&target.url)
        .admin()
        .toml(&format!(
            "[error_handling]\nbreaker_failures = 2\nbreaker_cooldown = \"1s\"\nmax_failures_per_hour = 4\nnotification_webhook = \"{}/notices\"\n",
            notices.url
        ))
        .start()
        .await;
    assert_eq!(
        t.post_events("msg_a", vec![broken_build("a1", 601, 10)])
            .await
            .status,
        200
    );

    // Two consecutive failures open the breaker; the event waits instead of using up retries.
    let opened = eventually(Duration::from_secs(10), async || {
        notices
            .requests()
            .iter()
            .any(|r| r.body.contains("breaker_open"))
    })
    .await;
    assert!(opened, "breaker_open announced: {:?}", notices.requests());
    let notice: Value = notices
        .requests()
        .iter()
        .find(|r| r.body.contains("breaker_open"))
        .and_then(|r| serde_json::from_str(&r.body).ok())
        .expect("a JSON notice");
    assert_eq!(
        (&notice["listener"], &notice["handler"]),
        (&json!("keyword_alerts"), &json!("keyword_alerts")),
        "the listener, and under its deprecated name: {notice}"
    );
    let mut waiting = Vec::new();
    let paused = eventually(Duration::from_secs(5), async || {
        waiting = t
            .query(|c| tables::inbox::inbox_entries(c, &[InboxStatus::Parked], 10).expect("q"))
            .await;
        waiting.len() == 1
            && waiting[0]
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("circuit breaker")
    })
    .await;
    assert!(
        paused,
        "the event waits for the breaker, parked: {waiting:?}"
    );
    let list = admin(&t, reqwest::Method::GET, "/admin/listeners", Some(ADMIN)).await;
    let alerts = list.json["listeners"]
        .as_array()
        .expect("list")
        .iter()
        .find(|h| h["name"] == "keyword_alerts")
        .cloned()
        .expect("listed");
    assert!(
        alerts["failures_last_hour"].as_u64().unwrap_or_default() >= 2,
        "{alerts:?}"
    );

    // Failing trials after each cool-down push it over 4 failures in the hour: disabled.
    let disabled = eventually(Duration::from_secs(20), async || {
        notices
            .requests()
            .iter()
            .any(|r| r.body.contains("\"disabled\""))
    })
    .await;
    assert!(disabled, "auto-disable announced");
    let reason = eventually(Duration::from_secs(5), async || {
        t.query(|c| zulip_listeners::db::tables::listeners::rows(c).expect("rows"))
            .await
            .iter()
            .any(|r| {
                r.name == "keyword_alerts"
                    && !r.enabled
                    && r.disabled_reason
                        .as_deref()
                        .unwrap_or_default()
                        .contains("disabled")
            })
    })
    .await;
    assert!(reason, "disabled state and reason persisted");

    // While disabled after failures, the event keeps waiting (it is not processed without
    // the handler).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = t.query(inbox_counts).await;
    assert_eq!(
        count_of(&now, InboxStatus::Parked) + count_of(&now, InboxStatus::Pending),
        1,
        "{now:?}"
    );
    assert_eq!(count_of(&now, InboxStatus::Done), 0, "{now:?}");

    // The target recovers; an operator enables the handler; the waiting event is processed.
    let failed_calls = target.requests().len();
    target.set_status(200);
    admin(
        &t,
        reqwest::Method::POST,
        "/admin/listeners/keyword_alerts/enable",
        Some(ADMIN),
    )
    .await;
    let done = eventually(Duration::from_secs(15), async || {
        count_of(&t.query(inbox_counts).await, InboxStatus::Done) == 1
    })
    .await;
    assert!(
        done,
        "nothing was lost while the handler was paused and disabled"
    );
    assert!(
        target.requests().len() > failed_calls,
        "the alert was delivered after the recovery"
    );
    t.stop().await;
    target.stop().await;
    notices.stop().await;
}

backend_test!(async fn sigterm_finishes_work_in_hand_and_exits_cleanly);
async fn sigterm_finishes_work_in_hand_and_exits_cleanly(backend: Backend) {
    let slow = Stub::start(r#"{"content": "slow answer"}"#, Duration::from_millis(1500)).await;
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(200)).await;
    let db = TestDatabase::new(backend);
    let config = db.config_file(&format!(
        "[server]\nshutdown_timeout = \"10s\"\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\nworkers = 1\nlisteners = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
         [handlers.keyword_alerts]\nrules = [{{ name = \"all\", pattern = \".\", webhook = \"{}/a\" }}]\n\
         [handlers.relay]\nurl = \"{}/\"\n{}",
        alerts.url,
        slow.url,
        helper_bot(&["relay"])
    ));
    let mut server = ServerProcess::start(&config.path).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let envelopes = (0..20)
        .map(|i| broken_build(&format!("s{i}"), 700 + i, 20 + i % 3))
        .collect();
    let answer = signed_events(&http, &base, "msg_s", now_s(), &batch(envelopes), SECRET)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 200);

    // A request in flight when SIGTERM arrives still gets its answer.
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/zulip/outgoing");
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(ping(9))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    let reply = in_flight
        .await
        .expect("task")
        .expect("answered during shutdown");
    let reply: Value = reply.json().await.expect("json");
    assert_eq!(reply, json!({"content": "slow answer"}), "{backend:?}");
    let status = {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "exits within the shutdown timeout"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        status.success(),
        "{backend:?}: exit 0 after SIGTERM, got {status:?}"
    );
    drop(server);

    // No event is half-processed: every done event has all its effects, no other has any.
    let mut conn = db.connect();
    let done = count_of(&inbox_counts(&mut conn), InboxStatus::Done);
    let pending = count_of(&inbox_counts(&mut conn), InboxStatus::Pending);
    assert_eq!(done + pending, 20, "{backend:?}");
    assert!(
        pending > 0,
        "{backend:?}: the shutdown interrupted the backlog (done {done})"
    );
    use diesel::prelude::*;
    use zulip_listeners::db::schema::{keyword_alerts, messages};
    let stored: i64 = messages::table
        .count()
        .get_result(&mut conn)
        .expect("count");
    let alerted: i64 = keyword_alerts::table
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!((stored, alerted), (done, done), "{backend:?}");
    let counted: i64 = (20..23)
        .filter_map(|u| tables::user_activity::activity_of(&mut conn, 2, u).expect("q"))
        .map(|a| a.message_count)
        .sum();
    assert_eq!(counted, done, "{backend:?}");
    slow.stop().await;
    alerts.stop().await;
}

#[actix_web::test]
async fn log_file_is_reopened_on_sighup() {
    let db = TestDatabase::new(Backend::Sqlite);
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("server.log");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n{TEST_ROOM}[telemetry]\nformat = \"json\"\nfile = \"{}\"\n",
            db.url,
            log.display()
        ),
    )
    .expect("config");
    let server = ServerProcess::start(&config).await;
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let first = std::fs::read_to_string(&log).expect("log written");
    assert!(
        first.lines().any(|l| l.contains("\"listening\"")),
        "{first}"
    );

    let rotated = dir.path().join("server.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    server.signal("HUP");
    let reopened = eventually(Duration::from_secs(10), async || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("log file reopened"))
    })
    .await;
    assert!(reopened, "a new file is written after SIGHUP");
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_ok(),
        "still serving"
    );
    drop(server);
}

backend_test!(async fn operator_commands_for_handlers_statistics_and_retention);
async fn operator_commands_for_handlers_statistics_and_retention(backend: Backend) {
    let db = TestDatabase::new(backend);
    let app = TestApp::new(&db).helper(&["command_bot"]);
    let file = app.config_file();
    let config = &file.path;
    let t = app.start().await;
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(1)).await.json["content"],
        "pong"
    );
    t.server.flush().await;

    // A running server follows `listeners disable` within its refresh interval.
    let said = cli(
        config,
        &[
            "listeners",
            "disable",
            "command_bot",
            "--reason",
            "maintenance",
        ],
    );
    assert!(said.starts_with("command_bot disabled"), "{said}");
    let followed = eventually(Duration::from_secs(15), async || {
        t.post_json("/zulip/outgoing", &ping(now_s())).await.json
            == json!({"response_not_required": true})
    })
    .await;
    assert!(
        followed,
        "{backend:?}: the running server disabled the handler"
    );
    let table = cli(config, &["listeners"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("command_bot"))
        .expect("listed");
    assert!(
        line.contains(" no ") && line.contains("maintenance"),
        "{line}"
    );
    cli(config, &["listeners", "enable", "command_bot"]);
    t.stop().await;

    let aggregated = cli(config, &["stats", "aggregate"]);
    assert!(
        aggregated.contains("statistics row(s) written"),
        "{aggregated}"
    );
    let cleaned = cli(config, &["cleanup", "--days", "0"]);
    assert!(
        cleaned.contains("Deleted") && cleaned.contains("event_log"),
        "{cleaned}"
    );
    let events = tables::event_log::count_event_logs(&mut db.connect()).expect("count");
    assert_eq!(events, 0, "{backend:?}: everything was older than 0 days");
}
