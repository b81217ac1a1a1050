//! Faults must stay contained: intake counts every event once, re-sent batches cost no
//! quota, a failing handler does not stall other realms, alerts are delivered once and cannot
//! inject mentions, and late results survive a graceful shutdown.

use crate::support::*;
use diesel::prelude::*;
use serde_json::{Value, json};
use zulip_listeners::db::DbConnection;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::schema::inbox;

/// An envelope of realm `realm` (`realm<id>`), emitted `age_s` seconds ago.
fn envelope_in(event_id: &str, realm: i64, age_s: i64, event: Value) -> Value {
    Envelope::new(event_id, event)
        .realm(realm, &format!("realm{realm}"))
        .emitted_at_ms((now_s() - age_s) * 1000)
        .json()
}
/// The intake counts of an answer: accepted, duplicates, expired, filtered, rate_limited.
fn buckets(answer: &Answer) -> [u64; 5] {
    [
        "accepted",
        "duplicates",
        "expired",
        "filtered",
        "rate_limited",
    ]
    .map(|k| answer.json[k].as_u64().unwrap_or(u64::MAX))
}

backend_test!(async fn every_event_of_a_batch_is_counted_in_exactly_one_bucket);
async fn every_event_of_a_batch_is_counted_in_exactly_one_bucket(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml("[filters]\nblocked_users = [99]\n[rate_limits.forwarder.per_user]\nper_minute = 1\nburst = 1\n")
        .start()
        .await;
    let filtered = || envelope("filtered", message(1, 99, "blocked user"));
    let expired = || envelope_in("expired", 2, 3 * 86_400, message(2, 10, "old"));
    let limited_b = || envelope("limited_b", message(4, 20, "second of user 20"));
    let fresh = || envelope("fresh", message(5, 30, "hello"));
    let new = || envelope("new", message(6, 40, "new"));
    let first = t
        .post_events(
            "msg_sums_1",
            vec![
                filtered(),
                expired(),
                envelope("limited_a", message(3, 20, "first of user 20")),
                limited_b(),
                fresh(),
            ],
        )
        .await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    assert_eq!(buckets(&first), [2, 0, 1, 1, 1], "{:?}", first.json);

    // The same events again, one of them twice, plus one new: only duplicates and the
    // new one, whatever the stored events' status is.
    let again = t
        .post_events(
            "msg_sums_2",
            vec![
                filtered(),
                expired(),
                limited_b(),
                limited_b(),
                fresh(),
                new(),
            ],
        )
        .await;
    assert_eq!(again.status, 200, "{:?}", again.json);
    assert_eq!(buckets(&again), [1, 5, 0, 0, 0], "{:?}", again.json);

    // A re-sent batch (same webhook-id) is all duplicates.
    let resent = t.post_events("msg_sums_2", vec![filtered(), new()]).await;
    assert_eq!(buckets(&resent), [0, 2, 0, 0, 0], "{:?}", resent.json);
    assert_eq!(resent.json["duplicate_batch"], true);
    t.stop().await;
}

backend_test!(async fn resent_batches_and_events_consume_no_rate_limit_quota);
async fn resent_batches_and_events_consume_no_rate_limit_quota(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml("[rate_limits.forwarder.per_user]\nper_minute = 1\nburst = 3\n")
        .start()
        .await;
    let two = batch(vec![
        envelope("q1", message(11, 77, "one")),
        envelope("q2", message(12, 77, "two")),
    ]);
    let answer = t.post_batch("msg_quota", &two).await;
    assert_eq!(buckets(&answer), [2, 0, 0, 0, 0], "{:?}", answer.json);
    for _ in 0..4 {
        let answer = t.post_batch("msg_quota", &two).await;
        assert_eq!(answer.json["duplicate_batch"], true);
    }
    for i in 0..3 {
        let answer = t.post_batch(&format!("msg_quota_again_{i}"), &two).await;
        assert_eq!(buckets(&answer), [0, 2, 0, 0, 0], "{:?}", answer.json);
    }
    // The user's third cell is still there.
    let fresh = t
        .post_batch(
            "msg_quota_fresh",
            &batch(vec![envelope("q3", message(13, 77, "three"))]),
        )
        .await;
    assert_eq!(buckets(&fresh), [1, 0, 0, 0, 0], "{:?}", fresh.json);
    // The fourth is over quota, stored with its envelope for a replay.
    let over = t
        .post_batch(
            "msg_quota_over",
            &batch(vec![envelope("q4", message(14, 77, "four"))]),
        )
        .await;
    assert_eq!(buckets(&over), [0, 0, 0, 0, 1], "{:?}", over.json);
    let (status, payload) = t.query(|c| inbox_status(c, "q4")).await;
    assert_eq!(status, InboxStatus::RateLimited);
    assert!(payload.contains("\"four\""), "{payload}");
    let stored = t
        .query(|c| {
            use zulip_listeners::db::schema::messages;
            messages::table
                .filter(messages::message_id.eq(14))
                .count()
                .get_result::<i64>(c)
                .expect("count")
        })
        .await;
    assert_eq!(stored, 0, "a rate-limited event is not processed");
    t.stop().await;
}

/// A server whose forwarded events go to message_logger and keyword_alerts (one worker, a
/// backlog of 2 at most, 50 retries `retry_delay` apart), alerting `target` on `alpha`;
/// `error_handling` is the `[error_handling]` table.
fn logger_and_alerts(
    db: &TestDatabase,
    target: &Stub,
    retry_delay: &str,
    error_handling: &str,
) -> TestApp {
    TestApp::new(db).forwarder().toml(&format!(
        "[forwarder]\nlisteners = [\"message_logger\", \"keyword_alerts\"]\nworkers = 1\nretry_delay = \"{retry_delay}\"\nmax_retries = 50\nmax_backlog = 2\n\
         [error_handling]\n{error_handling}\
         [handlers.keyword_alerts]\nrules = [{{ name = \"alpha\", pattern = \"alpha\", webhook = \"{}/alert\" }}]\n",
        target.url
    ))
}

/// A batch of four realm-2 messages from user 10 that the `alpha` rule matches, event ids
/// `<prefix>0` to `<prefix>3`.
fn four_alpha_messages(prefix: &str) -> String {
    batch(
        (0..4)
            .map(|i| {
                envelope(
                    &format!("{prefix}{i}"),
                    message(100 + i, 10, "alpha incident"),
                )
            })
            .collect(),
    )
}

/// Parked events (status, last error) of the inbox.
fn parked(c: &mut DbConnection) -> Vec<String> {
    inbox::table
        .filter(inbox::status.eq(InboxStatus::Parked))
        .select(inbox::event_id)
        .load::<EventKey>(c)
        .expect("inbox")
        .into_iter()
        .map(String::from)
        .collect()
}

backend_test!(async fn a_disabled_handler_parks_its_events_without_stalling_intake);
async fn a_disabled_handler_parks_its_events_without_stalling_intake(backend: Backend) {
    let target = Stub::failing().await;
    let db = TestDatabase::new(backend);
    let t = logger_and_alerts(
        &db,
        &target,
        "100ms",
        "breaker_failures = 100\nmax_failures_per_hour = 2\n",
    )
    .admin()
    .start()
    .await;
    let four = four_alpha_messages("p");
    assert_eq!(t.post_batch("msg_park_1", &four).await.status, 200);
    // Three failures disable keyword_alerts; every event then waits for it, parked.
    let mut last = Vec::new();
    let all_parked = eventually(std::time::Duration::from_secs(20), async || {
        last = t.query(parked).await;
        last.len() == 4 && t.query(|c| inbox_count(c, InboxStatus::Pending)).await == 0
    })
    .await;
    assert!(all_parked, "{backend:?}: parked {last:?}");

    // Over max_backlog in total, yet another realm's batch is accepted, and so is this
    // realm's: parked events are not a backlog.
    let other = batch(vec![envelope_in("r3", 3, 0, message(200, 11, "hello"))]);
    let answer = t.post_batch("msg_park_other_realm", &other).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    let same = batch(vec![envelope("p9", message(109, 10, "beta"))]);
    let answer = t.post_batch("msg_park_same_realm", &same).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);

    // Visible to operators.
    let listed = t
        .send(t.admin(reqwest::Method::GET, "/admin/dead-letters?status=parked"))
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    assert!(
        listed
            .json
            .to_string()
            .contains("waiting for `keyword_alerts`"),
        "{:?}",
        listed.json
    );
    t.stop().await;
    target.stop().await;
}

/// Pending events that have been tried at least once.
fn tried_pending(c: &mut DbConnection) -> i64 {
    inbox::table
        .filter(inbox::status.eq(InboxStatus::Pending))
        .filter(inbox::attempts.ge(1))
        .count()
        .get_result(c)
        .expect("count")
}

backend_test!(async fn a_failing_handler_holds_back_only_the_events_that_need_it);
async fn a_failing_handler_holds_back_only_the_events_that_need_it(backend: Backend) {
    let target = Stub::failing().await;
    let db = TestDatabase::new(backend);
    // keyword_alerts keeps failing (never disabled): its events stay pending, waiting
    // for a retry an hour away.
    let t = logger_and_alerts(
        &db,
        &target,
        "1h",
        "breaker_failures = 1000\nmax_failures_per_hour = 1000\n",
    )
    .start()
    .await;
    let four = four_alpha_messages("k");
    assert_eq!(t.post_batch("msg_listener_1", &four).await.status, 200);
    let tried = eventually(std::time::Duration::from_secs(20), async || {
        t.query(tried_pending).await == 4
    })
    .await;
    assert!(tried, "{backend:?}: the four events failed once and wait");

    // Realm 2 is over max_backlog for keyword_alerts, yet a delete (which only the pure
    // message_logger wants) is accepted and processed at once.
    let delete = batch(vec![envelope(
        "d1",
        json!({"type": "delete_message", "message_ids": [100], "message_type": "stream", "stream_id": 5, "topic": "greetings"}),
    )]);
    let answer = t.post_batch("msg_listener_delete", &delete).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    assert_eq!(answer.json["accepted"], 1, "{backend:?}: {:?}", answer.json);
    let done = eventually(std::time::Duration::from_secs(10), async || {
        t.query(|c| inbox_status(c, "d1")).await.0 == InboxStatus::Done
    })
    .await;
    assert!(done, "{backend:?}: the delete is not held back");

    // A message needs keyword_alerts too: refused, naming realm and handler.
    let more = batch(vec![envelope("k9", message(109, 10, "hello"))]);
    let answer = t.post_batch("msg_listener_message", &more).await;
    assert_eq!(answer.status, 429, "{backend:?}: {:?}", answer.json);
    assert_eq!(answer.json["error"], "over_capacity");
    let text = answer.json.to_string();
    assert!(
        text.contains("realm 2") && text.contains("keyword_alerts"),
        "{backend:?}: {text}"
    );
    // Another realm's messages are still accepted.
    let other = batch(vec![envelope_in("r3", 3, 0, message(300, 11, "alpha"))]);
    let answer = t.post_batch("msg_listener_other_realm", &other).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    t.stop().await;
    target.stop().await;
}

backend_test!(async fn a_failed_rule_does_not_repeat_alerts_already_delivered);
async fn a_failed_rule_does_not_repeat_alerts_already_delivered(backend: Backend) {
    let ok = Stub::start(r#"{"ok": true}"#, std::time::Duration::ZERO).await;
    let bad = Stub::start(r#"{"ok": false}"#, std::time::Duration::ZERO).await;
    bad.set_status(500);
    let (ok_before, bad_before) = (ok.requests().len(), bad.requests().len());
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(&format!(
            "[forwarder]\nlisteners = [\"keyword_alerts\"]\nmax_retries = 2\nretry_delay = \"100ms\"\n\
             [handlers.keyword_alerts]\nrules = [\
             {{ name = \"good\", pattern = \"alpha.*\", webhook = \"{}/ok\" }}, \
             {{ name = \"broken\", pattern = \"alpha\", webhook = \"{}/bad\" }}]\n",
            ok.url, bad.url
        ))
        .start()
        .await;
    let long = format!("alpha {}", "x".repeat(3000));
    let answer = t
        .post_batch(
            "msg_alert_once",
            &batch(vec![envelope("once", message(501, 10, &long))]),
        )
        .await;
    assert_eq!(answer.status, 200);
    let dead = eventually(std::time::Duration::from_secs(20), async || {
        t.query(|c| inbox_count(c, InboxStatus::Dead)).await == 1
    })
    .await;
    assert!(dead, "{backend:?}: the event ends dead");
    assert_eq!(
        bad.requests().len() - bad_before,
        3,
        "the failing rule is tried three times"
    );
    let delivered = &ok.requests()[ok_before..];
    assert_eq!(delivered.len(), 1, "{backend:?}: the good rule alerts once");
    let body: Value = serde_json::from_str(&delivered[0].body).expect("json");
    let matched = body["matched"].as_str().unwrap_or_default();
    assert!(
        matched.chars().count() <= 501,
        "matched is limited like the content: {} chars",
        matched.chars().count()
    );
    t.stop().await;
    ok.stop().await;
    bad.stop().await;
}

backend_test!(async fn late_handler_results_are_written_during_a_graceful_shutdown);
async fn late_handler_results_are_written_during_a_graceful_shutdown(backend: Backend) {
    let slow = Stub::start(r#"{"ok": true}"#, std::time::Duration::from_secs(2)).await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .helper(&["command_bot", "keyword_alerts", "message_logger"])
        .toml(&format!(
            "[handlers.keyword_alerts]\nrules = [{{ name = \"slow\", pattern = \"ping\", webhook = \"{}/slow\" }}]\n",
            slow.url
        ))
        .start()
        .await;
    let body = json!({
        "bot_email": BOT_EMAIL, "token": TOKEN, "trigger": "mention", "data": "ping",
        "message": {"id": 555001, "content": "ping", "type": "stream", "sender_id": 11,
                    "sender_email": "a@example.com", "sender_full_name": "A",
                    "display_recipient": "general", "subject": "t", "timestamp": 1732371234}
    });
    let started = std::time::Instant::now();
    let answer = t.post_json("/zulip/outgoing", &body.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "answered before the slow handler ends"
    );
    let server_db = t.server.db.clone();
    t.stop().await;
    let (messages, alerts) = server_db
        .run(|c| {
            use zulip_listeners::db::schema::{keyword_alerts, messages};
            let m: i64 = messages::table
                .filter(messages::message_id.eq(555001))
                .count()
                .get_result(c)?;
            let a: i64 = keyword_alerts::table
                .filter(keyword_alerts::message_id.eq(555001))
                .count()
                .get_result(c)?;
            Ok((m, a))
        })
        .await
        .expect("database");
    let logs = server_db
        .run(|c| {
            use zulip_listeners::db::schema::event_log as log;
            Ok(log::table
                .select((log::listener, log::success, log::error))
                .load::<(String, bool, Option<String>)>(c)?)
        })
        .await;
    assert_eq!(
        (messages, alerts),
        (1, 1),
        "{backend:?}: the message and the alert record are stored; event log {logs:?}"
    );
    slow.stop().await;
}

backend_test!(async fn nul_in_stored_text_fields_is_a_client_mistake);
async fn nul_in_stored_text_fields_is_a_client_mistake(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db).forwarder().start().await;
    let answer = t
        .post_batch(
            "msg_nul",
            &batch(vec![envelope("a\u{0}b", message(1, 10, "x"))]),
        )
        .await;
    assert_eq!(answer.status, 400, "{backend:?}: {:?}", answer.json);
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`event_id` contains a NUL character"),
        "{:?}",
        answer.json
    );
    t.stop().await;
}

#[test]
fn database_synchronous_is_validated() {
    let db = TestDatabase::new(Backend::Sqlite);
    let good = |value: &str| {
        zulip_listeners::config::Config::from_toml(&format!(
            "[database]\nurl = \"{}\"\nsynchronous = \"{value}\"\n",
            db.url
        ))
    };
    assert_eq!(
        good("normal").map(|c| c.database.sqlite_synchronous()).ok(),
        Some("NORMAL")
    );
    let error = good("sometimes")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("database.synchronous"), "{error}");
    let default =
        zulip_listeners::config::Config::from_toml(&format!("[database]\nurl = \"{}\"\n", db.url))
            .map(|c| c.database.sqlite_synchronous())
            .ok();
    assert_eq!(
        default,
        Some("FULL"),
        "acknowledged writes are durable by default"
    );
}
