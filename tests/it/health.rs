//! `GET /health` (ok, degraded with reasons, unavailable) and the process metrics on
//! `/metrics`.

use std::time::Duration;

use reqwest::Method;

use crate::support::*;
use serde_json::json;

fn reasons(answer: &Answer) -> Vec<String> {
    answer.json["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A server with the admin API whose keyword_alerts listener alerts a target answering 500
/// on broken builds, with `error_handling` as configuration.
async fn with_a_failing_target(db: &TestDatabase, error_handling: &str) -> (TestServer, Stub) {
    let target = Stub::failing().await;
    let t = TestApp::new(db)
        .alerting_on_broken(&target.url)
        .admin()
        .toml(error_handling)
        .start()
        .await;
    (t, target)
}

async fn admin_post(t: &TestServer, path: &str) -> Answer {
    t.send(t.admin(Method::POST, path)).await
}

/// Polls `/health` until `check` holds (the database facts are cached for a second).
/// Sends one event that fails, then waits until `/health` gives a reason containing each of
/// `wanted`.
async fn fail_until_reasons(
    t: &TestServer,
    webhook_id: &str,
    failing: serde_json::Value,
    wanted: &[&str],
) -> Answer {
    let sent = t.post_events(webhook_id, vec![failing]).await;
    assert_eq!(sent.status, 200);
    health_until(t, |a| {
        let given = reasons(a);
        wanted.iter().all(|w| given.iter().any(|r| r.contains(w)))
    })
    .await
}

/// The state `/health` gives for one listener.
fn listener_state(answer: &Answer, name: &str) -> Option<ListenerState> {
    let text = answer.json["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)?["state"]
        .as_str()?;
    ListenerState::ALL.into_iter().find(|s| s.as_str() == text)
}

async fn health_until(t: &TestServer, check: impl Fn(&Answer) -> bool) -> Answer {
    let mut last = None;
    eventually(Duration::from_secs(10), async || {
        let answer = t.health().await;
        let ok = check(&answer);
        last = Some(answer);
        ok
    })
    .await;
    match last {
        Some(answer) => answer,
        None => panic!("no answer from /health"),
    }
}

backend_test!(async fn ok_then_degraded_by_an_operator_then_ok_again);
async fn ok_then_degraded_by_an_operator_then_ok_again(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db).admin().start().await;

    let start = t.health().await;
    assert_eq!(start.status, 200, "{:?}", start.json);
    assert_eq!(start.json["status"], "ok", "{:?}", start.json);
    assert_eq!(reasons(&start), Vec::<String>::new());
    assert_eq!(start.json["database"], "ok");
    assert!(
        start.json["listeners"]
            .as_array()
            // Every handler is fine; "off" ones (welcome_bot in config/default.toml) are
            // switched off in the file, which is not a degradation.
            .is_some_and(|h| h.len() >= 4
                && h.iter().all(|h| {
                    h["state"] == ListenerState::Ok.as_str()
                        || h["state"] == ListenerState::Off.as_str()
                })),
        "{:?}",
        start.json
    );

    assert_eq!(
        admin_post(&t, "/admin/listeners/relay/disable")
            .await
            .status,
        200
    );
    let degraded = health_until(&t, |a| a.json["status"] == "degraded").await;
    assert_eq!(degraded.status, 200, "degraded still answers 200");
    assert_eq!(
        reasons(&degraded),
        vec!["listener `relay` is disabled by an operator (admin API or command line)".to_string()],
        "{:?}",
        degraded.json
    );
    assert_eq!(
        listener_state(&degraded, "relay"),
        Some(ListenerState::Disabled),
        "{:?}",
        degraded.json
    );

    assert_eq!(
        admin_post(&t, "/admin/listeners/relay/enable").await.status,
        200
    );
    let ok = health_until(&t, |a| a.json["status"] == "ok").await;
    assert_eq!(
        (ok.status, ok.json["status"].as_str()),
        (200, Some("ok")),
        "{:?}",
        ok.json
    );
    t.stop().await;
}

#[actix_web::test]
async fn an_open_breaker_degrades_until_the_handler_recovers() {
    let db = TestDatabase::new(Backend::Sqlite);
    let (t, target) = with_a_failing_target(&db, "[error_handling]\nbreaker_failures = 2\nbreaker_cooldown = \"60s\"\nmax_failures_per_hour = 1000\n").await;
    assert_eq!(t.health().await.json["status"], "ok");

    let degraded = fail_until_reasons(
        &t,
        "msg_b",
        broken_build("b1", 701, 10),
        &["circuit breaker open", "parked"],
    )
    .await;
    assert_eq!(
        (degraded.status, degraded.json["status"].as_str()),
        (200, Some("degraded")),
        "{:?}",
        degraded.json
    );
    let all = reasons(&degraded);
    assert!(
        all.iter()
            .any(|r| r.starts_with("listener `keyword_alerts`: circuit breaker open")),
        "{all:?}"
    );
    assert!(
        all.iter().any(|r| r.starts_with("1 event(s) parked")),
        "{all:?}"
    );
    assert_eq!(degraded.json["parked_events"], 1);
    let text = degraded.json.to_string();
    assert!(
        !text.contains("broken") && !text.contains(&target.url),
        "no event or target text in /health: {text}"
    );

    // The target recovers and an operator enables the handler (which closes the breaker) and
    // replays the parked event: it is processed and the service is ok again.
    target.set_status(200);
    assert_eq!(
        admin_post(&t, "/admin/listeners/keyword_alerts/enable")
            .await
            .status,
        200
    );
    // An event parked behind the breaker waits for its cool-down (60 s here): replay it now.
    let replay = t
        .send(
            t.admin(Method::POST, "/admin/dead-letters/replay")
                .body(r#"{"all": true, "status": "parked"}"#),
        )
        .await;
    assert_eq!(replay.json["requeued"], 1, "{:?}", replay.json);
    // The replay is kept in the audit trail.
    let audit = t
        .send(t.admin(Method::GET, "/admin/dead-letters?status=parked"))
        .await;
    let replays = audit.json["replays"].as_array().expect("replays");
    assert_eq!(
        (
            &replays[0]["source"],
            &replays[0]["old_value"],
            &replays[0]["new_value"]
        ),
        (
            &json!("admin API"),
            &json!("parked: all"),
            &json!("1 requeued")
        ),
        "{replays:?}"
    );
    let ok = health_until(&t, |a| a.json["status"] == "ok").await;
    assert_eq!(ok.json["status"], "ok", "{:?}", ok.json);
    t.stop().await;
    target.stop().await;
}

#[actix_web::test]
async fn process_metrics_are_plausible() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db).start().await;
    // The gauges are refreshed in the background: the per-listener queue lag appears once
    // the first refresh has run.
    let lag_exported = eventually(Duration::from_secs(10), async || {
        t.metrics()
            .await
            .contains(r#"zulip_listeners_listener_queue_lag_seconds{listener="message_logger",handler="message_logger"} 0"#)
    })
    .await;
    assert!(lag_exported, "queue lag per forwarder listener");
    let text = t.metrics().await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no {name} in the scrape"));
        match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    assert!(value("process_resident_memory_bytes") > 1_048_576.0);
    assert!(value("process_open_fds") > 0.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let started = value("process_start_time_seconds");
    let now = now_s() as f64;
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "started {started}, now {now}"
    );
    t.stop().await;
}

#[actix_web::test]
async fn an_auto_disabled_handler_degrades_with_its_stored_reason() {
    let db = TestDatabase::new(Backend::Sqlite);
    let (t, target) = with_a_failing_target(
        &db,
        "[error_handling]\nbreaker_failures = 1000\nmax_failures_per_hour = 2\n",
    )
    .await;
    let degraded = fail_until_reasons(
        &t,
        "msg_c",
        broken_build("c1", 801, 10),
        &["failed 3 times within an hour"],
    )
    .await;
    let all = reasons(&degraded);
    assert!(
        all.iter().any(|r| r
            .starts_with("listener `keyword_alerts` auto-disabled: Listener `keyword_alerts` failed 3 times within an hour and was disabled.")),
        "{all:?}"
    );
    assert_eq!(degraded.json["status"], "degraded");
    // The breaker's decision is in the listener's history.
    let shown = t
        .send(t.admin(Method::GET, "/admin/listeners/keyword_alerts"))
        .await;
    let last = &shown.json["history"][0];
    assert_eq!(
        (
            &last["source"],
            &last["field"],
            &last["old_value"],
            &last["new_value"]
        ),
        (
            &json!("breaker"),
            &json!("enabled"),
            &json!("true"),
            &json!("false")
        ),
        "{:?}",
        shown.json["history"]
    );
    assert_eq!(shown.json["state"], ListenerState::AutoDisabled.as_str());
    assert_eq!(
        listener_state(&degraded, "keyword_alerts"),
        Some(ListenerState::AutoDisabled),
        "{:?}",
        degraded.json
    );

    target.set_status(200);
    assert_eq!(
        admin_post(&t, "/admin/listeners/keyword_alerts/enable")
            .await
            .status,
        200
    );
    t.send(
        t.admin(Method::POST, "/admin/dead-letters/replay")
            .body(r#"{"all": true, "status": "parked"}"#),
    )
    .await;
    let ok = health_until(&t, |a| a.json["status"] == "ok").await;
    assert_eq!(ok.json["status"], "ok", "{:?}", ok.json);
    t.stop().await;
    target.stop().await;
}
