//! Rate limits and guards over real HTTP: what a limited or filtered request gets on each
//! path, and that nothing refused is lost.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use zulip_listeners::db::tables::inbox::InboxStatus;
use zulip_listeners::db::{DbConnection, tables};

/// Posts an outgoing webhook mentioning `helper` (`ping`) from `sender` of realm `realm`.
async fn ping_from(t: &TestServer, id: i64, sender: i64, realm: &str) -> Answer {
    let mut body = mention_json(id, "@**Helper** ping");
    body["message"]["sender_id"] = json!(sender);
    body["message"]["sender_email"] = json!(format!("user{sender}@example.com"));
    body["message"]["sender_realm_str"] = json!(realm);
    t.post_json("/zulip/outgoing", &body.to_string()).await
}

/// A forwarded message from `sender` in realm `realm` (`r<id>`), emitted at `emitted_ms`.
fn envelope_from(
    event_id: &str,
    realm: i64,
    sender: i64,
    message_id: i64,
    emitted_ms: i64,
) -> Value {
    let event = channel_message(message_id, sender, "hello", ("general", 5, "t"));
    Envelope::new(event_id, event)
        .realm(realm, &format!("r{realm}"))
        .audience(&[sender])
        .emitted_at_ms(emitted_ms)
        .json()
}

fn inbox_row(c: &mut DbConnection, status: InboxStatus) -> Vec<(String, Option<String>)> {
    tables::inbox::inbox_entries(c, &[status], 100)
        .expect("inbox")
        .into_iter()
        .map(|e| (e.event_id, e.last_error))
        .collect()
}

#[actix_web::test]
async fn outgoing_webhooks_over_quota_get_a_notice_not_an_error() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["command_bot"])
        .toml(
            "[bots.helper.rate_limits.per_user]\nper_minute = 60\nburst = 2\n\
             [bots.helper.rate_limits.per_realm]\nper_minute = 60\nburst = 4\n",
        )
        .start()
        .await;
    let pong = json!({"content": "pong"});
    assert_eq!(ping_from(&t, 1, 10, "zulip").await.json, pong);
    assert_eq!(ping_from(&t, 2, 10, "zulip").await.json, pong);
    let limited = ping_from(&t, 3, 10, "zulip").await;
    assert_eq!(
        limited.status, 200,
        "never an error status for Zulip to post publicly"
    );
    let notice = limited.json["content"]
        .as_str()
        .expect("the notice is the reply");
    assert!(notice.contains("faster than I can answer"), "{notice}");
    // Zulip's retry of the limited message gets the same answer, and costs no quota.
    assert_eq!(ping_from(&t, 3, 10, "zulip").await.json, limited.json);

    // Another user is not affected by user 10's quota …
    assert_eq!(ping_from(&t, 4, 11, "zulip").await.json, pong);
    // … until the realm's quota (4 at once) is used up, across users.
    let capped = ping_from(&t, 5, 12, "zulip").await;
    assert_eq!(capped.json["content"].as_str(), Some(notice));

    let rows = t.query(|c| log_errors(c, "rate_limiter")).await;
    assert_eq!(rows.len(), 2, "each refusal is in the event log: {rows:?}");
    assert!(
        rows[0]
            .as_deref()
            .unwrap_or_default()
            .contains("user's rate limit")
    );
    assert!(
        rows[1]
            .as_deref()
            .unwrap_or_default()
            .contains("realm's rate limit")
    );
    t.stop().await;

    // With an empty notice, a limited request gets no reply at all.
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["command_bot"])
        .toml("[rate_limits]\noutgoing_notice = \"\"\n[rate_limits.outgoing.per_user]\nper_minute = 1\nburst = 1\n")
        .start()
        .await;
    assert_eq!(ping_from(&t, 1, 10, "zulip").await.json, pong);
    let quiet = ping_from(&t, 2, 10, "zulip").await;
    assert_eq!(quiet.json, json!({"response_not_required": true}));
    t.stop().await;
}

backend_test!(async fn forwarded_events_over_quota_are_kept_and_replayable);
async fn forwarded_events_over_quota_are_kept_and_replayable(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(
            "[forwarder]\nlisteners = [\"message_logger\"]\n\
             [rate_limits.forwarder.per_user]\nper_minute = 60\nburst = 2\n",
        )
        .start()
        .await;
    let ms = now_s() * 1000;
    let events = (0..3)
        .map(|i| envelope_from(&format!("q{i}"), 2, 10, 100 + i, ms))
        .collect();
    let answer = t.post_events("msg_quota", events).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        (
            answer.json["accepted"].as_i64(),
            answer.json["rate_limited"].as_i64()
        ),
        (Some(2), Some(1))
    );

    let limited = t.query(|c| inbox_row(c, InboxStatus::RateLimited)).await;
    assert_eq!(limited.len(), 1, "{backend:?}");
    assert_eq!(limited[0].0, "q2");
    assert!(
        limited[0]
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("user's rate limit")
    );
    let kept = t
        .query(|c| tables::messages::message_by_id(c, 102).expect("q"))
        .await;
    assert!(kept.is_none(), "not dispatched");

    let requeued = t
        .query(|c| {
            tables::inbox_work::requeue(c, &[InboxStatus::RateLimited], None).expect("requeue")
        })
        .await;
    assert_eq!(requeued, 1);
    let replayed = eventually(Duration::from_secs(10), async || {
        t.query(|c| tables::messages::message_by_id(c, 102).expect("q"))
            .await
            .is_some()
    })
    .await;
    assert!(
        replayed,
        "{backend:?}: a replayed rate-limited event is processed"
    );
    t.stop().await;
}

#[actix_web::test]
async fn a_deep_backlog_is_answered_429_with_retry_after() {
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(300)).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(&format!(
            "[forwarder]\nworkers = 1\nmax_backlog = 2\nlisteners = [\"keyword_alerts\"]\n\
             [handlers.keyword_alerts]\nrules = [{{ name = \"all\", pattern = \".\", webhook = \"{}/a\" }}]\n",
            alerts.url
        ))
        .start()
        .await;
    let ms = now_s() * 1000;
    let first = t
        .post_events(
            "msg_b1",
            (0..4)
                .map(|i| envelope_from(&format!("b{i}"), 2, 10 + i, 200 + i, ms))
                .collect(),
        )
        .await;
    assert_eq!(first.status, 200);
    // The backlog is realm 2's: another realm's batch is still accepted.
    let other = t
        .post_events("msg_other_realm", vec![envelope_from("o1", 3, 10, 300, ms)])
        .await;
    assert_eq!(other.status, 200, "{:?}", other.json);
    let more = batch(vec![envelope_from("b9", 2, 10, 209, ms)]);
    let response = t
        .events_request("msg_b2", now_s(), &more, SECRET)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "over_capacity");

    let drained = eventually(Duration::from_secs(15), async || {
        t.post_events("msg_b3", vec![envelope_from("b10", 2, 10, 210, ms)])
            .await
            .status
            == 200
    })
    .await;
    assert!(drained, "accepted again once the workers caught up");
    t.stop().await;
    alerts.stop().await;
}

backend_test!(async fn realm_and_user_filters_on_both_paths);
async fn realm_and_user_filters_on_both_paths(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .helper(&["command_bot"])
        .forwarder()
        .toml(
            "[forwarder]\nlisteners = [\"message_logger\"]\n\
             [filters]\nallowed_realms = [2, \"zulip\"]\nblocked_users = [13]\n",
        )
        .start()
        .await;
    let pong = json!({"content": "pong"});
    let quiet = json!({"response_not_required": true});
    assert_eq!(ping_from(&t, 1, 10, "zulip").await.json, pong);
    assert_eq!(ping_from(&t, 2, 10, "elsewhere").await.json, quiet);
    assert_eq!(ping_from(&t, 3, 13, "zulip").await.json, quiet);
    let rows = t.query(|c| log_errors(c, "filters")).await;
    assert_eq!(rows.len(), 2, "{backend:?}: {rows:?}");
    assert!(
        rows[0]
            .as_deref()
            .unwrap_or_default()
            .contains("`elsewhere` is not in filters.allowed_realms")
    );
    assert!(
        rows[1]
            .as_deref()
            .unwrap_or_default()
            .contains("user 13 is in filters.blocked_users")
    );

    let ms = now_s() * 1000;
    let old = ms - 2 * 24 * 3600 * 1000;
    let answer = t
        .post_events(
            "msg_filters",
            vec![
                envelope_from("ok", 2, 10, 300, ms),
                envelope_from("other-realm", 3, 10, 301, ms),
                envelope_from("blocked", 2, 13, 302, ms),
                envelope_from("too-old", 2, 10, 303, old),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        (
            answer.json["accepted"].as_i64(),
            answer.json["filtered"].as_i64(),
            answer.json["expired"].as_i64()
        ),
        (Some(1), Some(2), Some(1))
    );
    let (filtered, expired) = t
        .query(|c| {
            (
                inbox_row(c, InboxStatus::Filtered),
                inbox_row(c, InboxStatus::Expired),
            )
        })
        .await;
    let reason = |id: &str| {
        filtered
            .iter()
            .find(|(e, _)| e == id)
            .and_then(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(
        reason("other-realm").contains("`r3` (id 3) is not in filters.allowed_realms"),
        "{filtered:?}"
    );
    assert!(reason("blocked").contains("user 13"));
    assert_eq!(expired.len(), 1);
    assert!(
        expired[0]
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("max_event_age")
    );
    t.stop().await;
}

#[actix_web::test]
async fn stored_errors_and_logs_are_sanitized() {
    let service = Stub::start(
        r#"{"detail": "no such user alice.smith@example.com"}"#,
        Duration::ZERO,
    )
    .await;
    service.set_status(500);
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["relay"])
        .toml(&format!("[handlers.relay]\nurl = \"{}/\"\n", service.url))
        .start()
        .await;
    let answer = ping_from(&t, 1, 10, "zulip").await;
    assert_eq!(answer.json, json!({"response_not_required": true}));
    let errors = t.query(|c| log_errors(c, "relay")).await;
    let error = errors[0].clone().unwrap_or_default();
    // Only the status line of the answer is kept, none of what it says.
    assert_eq!(error, "bot service answered 500 Internal Server Error");
    t.stop().await;
    service.stop().await;
}
