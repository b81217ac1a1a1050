//! Running it in production: health, metrics, the admin API, circuit breakers and
//! auto-disable, graceful shutdown, and log files reopened on SIGHUP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use serde_json::{Value, json};
use zulip_listeners::db::tables::inbox::InboxStatus;
use zulip_listeners::db::{DbConnection, tables};
use zulip_listeners::verification::SigningKey;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN: &str = "admin-token-for-tests-0123456789";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ping(id: i64) -> String {
    json!({"bot_email": BOT_EMAIL, "bot_full_name": "Helper", "token": TOKEN, "trigger": "mention",
           "message": {"id": id, "type": "stream", "content": "@**Helper** ping", "sender_id": 10,
                       "sender_realm_str": "zulip", "stream_id": 5, "subject": "t"}})
    .to_string()
}

fn envelope(event_id: &str, message_id: i64, sender: i64) -> Value {
    json!({"v": 1, "event_id": event_id, "emitted_at_ms": now() * 1000,
           "server": {"host": "h", "zulip_version": "10.2", "feature_level": 334},
           "realm": {"id": 2, "uuid": "u", "string_id": "acme"}, "type": "message", "op": null,
           "audience": {"count": 1, "user_ids": [sender]},
           "event": {"type": "message", "flags": [], "message": {"id": message_id, "sender_id": sender,
               "content": "the build is broken", "type": "stream", "display_recipient": "ops",
               "stream_id": 5, "subject": "ci", "timestamp": 1700000000}}})
}

fn signed_batch(
    http: &reqwest::Client,
    url: &str,
    webhook_id: &str,
    envelopes: Vec<Value>,
) -> reqwest::RequestBuilder {
    let body = json!({ "events": envelopes }).to_string();
    let ts = now();
    let signature = SigningKey::parse(SECRET)
        .expect("key")
        .sign(webhook_id, ts, body.as_bytes());
    http.post(url)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
}

async fn admin(t: &TestServer, method: reqwest::Method, path: &str, token: Option<&str>) -> Answer {
    let mut request = t.http.request(method, format!("{}{path}", t.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    t.send(request).await
}

fn counts(c: &mut DbConnection) -> Vec<(String, i64)> {
    tables::inbox::inbox_counts(c)
        .expect("counts")
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect()
}

fn count_of(counts: &[(String, i64)], status: &str) -> i64 {
    counts
        .iter()
        .find(|(s, _)| s == status)
        .map_or(0, |(_, n)| *n)
}

#[actix_web::test]
async fn health_and_readiness() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start_server(&db, "").await;
    let live = t.send(t.http.get(format!("{}/healthz", t.base))).await;
    assert_eq!(
        (live.status, live.json["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = t.send(t.http.get(format!("{}/readyz", t.base))).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["database"], "ok");
    assert_eq!(ready.json["accepting"], true);
    assert!(ready.json["handlers"].as_u64().unwrap_or_default() >= 4);
    t.stop().await;
}

#[actix_web::test]
async fn metrics_are_prometheus_text() {
    let db = TestDatabase::new(Backend::Sqlite);
    let extra = format!(
        "{}[forwarder]\nsecrets = [\"{SECRET}\"]\n",
        helper_bot(r#"["command_bot"]"#)
    );
    let t = start_server(&db, &extra).await;
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(1)).await.json["content"],
        "pong"
    );
    let answer = t
        .send(signed_batch(
            &t.http,
            &format!("{}/zulip/events", t.base),
            "msg_m",
            vec![envelope("m1", 501, 10)],
        ))
        .await;
    assert_eq!(answer.status, 200);
    let metrics_addr = t.server.metrics_addr.expect("metrics listener");
    let mut scrape = None;
    let found = eventually(Duration::from_secs(10), async || {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
        let has = |name: &str| parsed.samples.iter().any(|s| s.metric == name);
        let ready =
            has("zulip_listeners_handler_runs_total") && has("zulip_listeners_inbox_events");
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
        "zulip_listeners_handler_runs_total",
        ("handler", "command_bot"),
    );
    let latency = sample(
        "zulip_listeners_handler_duration_seconds",
        ("handler", "command_bot"),
    );
    assert!(
        matches!(latency.value, prometheus_parse::Value::Histogram(ref buckets) if !buckets.is_empty()),
        "a histogram with buckets: {:?}",
        latency.value
    );
    sample("zulip_listeners_inbox_events", ("status", "pending"));
    sample("zulip_listeners_db_pool_connections", ("state", "idle"));
    t.stop().await;
}

#[actix_web::test]
async fn admin_api_requires_its_token_and_controls_handlers() {
    for backend in backends() {
        let db = TestDatabase::new(backend);
        let off = start_server(&db, "").await;
        let answer = admin(&off, reqwest::Method::GET, "/admin/listeners", Some(ADMIN)).await;
        assert_eq!(answer.status, 404, "off without a token");
        off.stop().await;

        let extra = format!(
            "{}[admin]\ntoken = \"{ADMIN}\"\n",
            helper_bot(r#"["command_bot"]"#)
        );
        let t = start_server(&db, &extra).await;
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
        let t = start_server(&db, &extra).await;
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
            "/admin/events?handler=command_bot&per_page=1",
            Some(ADMIN),
        )
        .await;
        let events = page.json["events"].as_array().expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0]["message_id"].as_i64(),
                events[0]["success"].as_bool()
            ),
            (Some(4), Some(true))
        );
        let stats = admin(&t, reqwest::Method::GET, "/admin/stats", Some(ADMIN)).await;
        assert!(
            stats.json["runs_last_hour"].as_i64().unwrap_or_default() >= 2,
            "{:?}",
            stats.json
        );
        assert!(stats.json["last_event_time_ms"].as_i64().is_some());
        assert!(
            stats.json["active_listeners"]
                .as_array()
                .expect("list")
                .iter()
                .any(|h| h == "command_bot")
        );
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
}

#[actix_web::test]
async fn breaker_opens_keeps_events_pending_and_auto_disables() {
    let target = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let notices = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    target.set_status(500);
    let db = TestDatabase::new(Backend::Sqlite);
    let extra = format!(
        "[forwarder]\nsecrets = [\"{SECRET}\"]\nhandlers = [\"keyword_alerts\"]\nworkers = 1\nretry_delay = \"50ms\"\nmax_retries = 50\n\
         [admin]\ntoken = \"{ADMIN}\"\n\
         [error_handling]\nbreaker_failures = 2\nbreaker_cooldown = \"1s\"\nmax_failures_per_hour = 4\nnotification_webhook = \"{}/notices\"\n\
         [handlers.keyword_alerts]\nrules = [{{ name = \"broken\", pattern = \"broken\", webhook = \"{}/alert\" }}]\n",
        notices.url, target.url
    );
    let t = start_server(&db, &extra).await;
    let url = format!("{}/zulip/events", t.base);
    assert_eq!(
        t.send(signed_batch(
            &t.http,
            &url,
            "msg_a",
            vec![envelope("a1", 601, 10)]
        ))
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
    let now = t.query(counts).await;
    assert_eq!(
        count_of(&now, "parked") + count_of(&now, "pending"),
        1,
        "{now:?}"
    );
    assert_eq!(count_of(&now, "done"), 0, "{now:?}");

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
        count_of(&t.query(counts).await, "done") == 1
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

#[actix_web::test]
async fn sigterm_finishes_work_in_hand_and_exits_cleanly() {
    let slow = Stub::start(r#"{"content": "slow answer"}"#, Duration::from_millis(1500)).await;
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(200)).await;
    for backend in backends() {
        let db = TestDatabase::new(backend);
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nshutdown_timeout = \"10s\"\n[database]\nurl = \"{}\"\n\
                 [forwarder]\nsecrets = [\"{SECRET}\"]\nworkers = 1\nhandlers = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
                 [handlers.keyword_alerts]\nrules = [{{ name = \"all\", pattern = \".\", webhook = \"{}/a\" }}]\n\
                 [handlers.relay]\nurl = \"{}/\"\n\
                 [bots.helper]\nemail = \"{BOT_EMAIL}\"\ntoken = \"{TOKEN}\"\nhandlers = [\"relay\"]\n",
                db.url, alerts.url, slow.url
            ),
        )
        .expect("config");
        let mut server = ServerProcess::start(&config).await;
        let base = server.base.clone();
        let http = reqwest::Client::new();
        let envelopes = (0..20)
            .map(|i| envelope(&format!("s{i}"), 700 + i, 20 + i % 3))
            .collect();
        let answer = signed_batch(&http, &format!("{base}/zulip/events"), "msg_s", envelopes)
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
        let target = zulip_listeners::config::parse_database_url(&db.url).expect("url");
        let mut conn = zulip_listeners::db::establish(&target).expect("connect");
        let done = count_of(&counts(&mut conn), "done");
        let pending = count_of(&counts(&mut conn), "pending");
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
    }
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
            "[database]\nurl = \"{}\"\n[telemetry]\nformat = \"json\"\nfile = \"{}\"\n",
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

#[actix_web::test]
async fn operator_commands_for_handlers_statistics_and_retention() {
    for backend in backends() {
        let db = TestDatabase::new(backend);
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{}\"\n{}",
                db.url,
                helper_bot(r#"["command_bot"]"#)
            ),
        )
        .expect("config");
        let t = start_server(&db, &helper_bot(r#"["command_bot"]"#)).await;
        assert_eq!(
            t.post_json("/zulip/outgoing", &ping(1)).await.json["content"],
            "pong"
        );
        t.server.flush().await;

        // A running server follows `listeners disable` within its refresh interval.
        let said = cli(
            &config,
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
            t.post_json("/zulip/outgoing", &ping(now())).await.json
                == json!({"response_not_required": true})
        })
        .await;
        assert!(
            followed,
            "{backend:?}: the running server disabled the handler"
        );
        let table = cli(&config, &["listeners"]);
        let line = table
            .lines()
            .find(|l| l.starts_with("command_bot"))
            .expect("listed");
        assert!(
            line.contains(" no ") && line.contains("maintenance"),
            "{line}"
        );
        cli(&config, &["listeners", "enable", "command_bot"]);
        t.stop().await;

        let aggregated = cli(&config, &["stats", "aggregate"]);
        assert!(
            aggregated.contains("statistics row(s) written"),
            "{aggregated}"
        );
        let cleaned = cli(&config, &["cleanup", "--days", "0"]);
        assert!(
            cleaned.contains("Deleted") && cleaned.contains("event_log"),
            "{cleaned}"
        );
        let events = t_count_event_log(&db);
        assert_eq!(events, 0, "{backend:?}: everything was older than 0 days");
    }
}

fn t_count_event_log(db: &TestDatabase) -> i64 {
    let target = zulip_listeners::config::parse_database_url(&db.url).expect("url");
    let mut conn = zulip_listeners::db::establish(&target).expect("connect");
    tables::event_log::count_event_logs(&mut conn).expect("count")
}
