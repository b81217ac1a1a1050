//! Forwarder batches over real HTTP against the real server: verification, durable intake,
//! processing by the handlers, retries, dead letters, and recovery after SIGKILL.
//!
//! Long file: the forwarder path end to end (intake, verification, retries, dead letters, SIGKILL), one scenario per test, read best together.

use std::time::Duration;

use crate::support::*;
use diesel::prelude::*;
use serde_json::{Value, json};
use zulip_listeners::db::{DbConnection, tables};

backend_test!(async fn signed_batches_are_stored_and_processed_by_the_handlers);
async fn signed_batches_are_stored_and_processed_by_the_handlers(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db).forwarder().start().await;
    let events = vec![
        envelope("e1", message(1001, 10, "hello **all**")),
        envelope("e2", message(1002, 10, "a second one")),
        envelope(
            "e3",
            json!({"type": "reaction", "op": "add", "user_id": 11, "message_id": 1001, "emoji_name": "thumbs_up", "emoji_code": "1f44d", "reaction_type": "unicode_emoji"}),
        ),
        envelope(
            "e4",
            json!({"type": "presence", "user_id": 11, "server_timestamp": 1700000000.5, "presence": {"website": {"client": "website", "status": "active", "timestamp": 1700000000, "pushable": false}}}),
        ),
        envelope(
            "e5",
            json!({"type": "typing", "op": "start", "message_type": "stream", "sender": {"user_id": 12, "email": "user12@acme.example.com"}, "stream_id": 5, "topic": "greetings"}),
        ),
        envelope(
            "e6",
            json!({"type": "update_message", "user_id": 10, "edit_timestamp": 1700000100, "message_id": 1001, "message_ids": [1001], "rendering_only": false, "content": "hello **everyone**", "subject": "renamed", "orig_subject": "greetings", "propagate_mode": "change_one", "stream_id": 5, "flags": ["read"]}),
        ),
        envelope(
            "e7",
            json!({"type": "delete_message", "message_ids": [1002], "message_type": "stream", "stream_id": 5, "topic": "greetings"}),
        ),
        envelope("e8", json!({"type": "drafts", "op": "add", "drafts": []})),
    ];
    let answer = t.post_batch("msg_batch_1", &batch(events)).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    assert_eq!(answer.json["accepted"], 8);
    assert_eq!(answer.json["duplicates"], 0);

    let counts = t.settle(8).await;
    assert_eq!(
        count_of(&counts, InboxStatus::Done),
        8,
        "{backend:?}: {counts:?}"
    );
    let (m1, m2, a10, a11, a12) = t
        .query(|c| {
            (
                tables::messages::message_by_id(c, 1001)
                    .expect("q")
                    .expect("1001 stored"),
                tables::messages::message_by_id(c, 1002)
                    .expect("q")
                    .expect("1002 stored"),
                tables::user_activity::activity_of(c, 2, 10)
                    .expect("q")
                    .expect("user 10"),
                tables::user_activity::activity_of(c, 2, 11)
                    .expect("q")
                    .expect("user 11"),
                tables::user_activity::activity_of(c, 2, 12)
                    .expect("q")
                    .expect("user 12"),
            )
        })
        .await;
    assert_eq!(
        m1.content, "hello **everyone**",
        "{backend:?}: edit applied"
    );
    assert_eq!(m1.topic.as_deref(), Some("renamed"));
    assert_eq!(m1.edited_at, Some(1700000100));
    assert!(!m1.deleted);
    assert!(m2.deleted, "delete applied");
    assert_eq!(a10.message_count, 2);
    assert_eq!(
        (a11.reaction_count, a11.last_presence.as_deref()),
        (1, Some("active"))
    );
    assert!(a12.last_typing_at_ms.is_some());
    t.stop().await;
}

backend_test!(async fn forged_tampered_stale_and_replayed_batches);
async fn forged_tampered_stale_and_replayed_batches(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db).forwarder().start().await;
    let body = batch(vec![envelope("r1", message(2001, 20, "once"))]);

    let forged = t
        .send(t.events_request("msg_forged", now_s(), &body, OTHER_SECRET))
        .await;
    assert_eq!(
        (forged.status, forged.json["error"].as_str()),
        (401, Some("invalid_signature"))
    );

    let tampered = t
        .events_request("msg_tampered", now_s(), &body, SECRET)
        .body(body.replace("once", "twice"));
    let tampered = t.send(tampered).await;
    assert_eq!(
        (tampered.status, tampered.json["error"].as_str()),
        (401, Some("invalid_signature"))
    );

    for stale in [now_s() - 301, now_s() + 301] {
        let answer = t
            .send(t.events_request("msg_stale", stale, &body, SECRET))
            .await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (401, Some("stale_timestamp"))
        );
    }
    let unsigned = t
        .send(
            t.http
                .post(format!("{}/zulip/events", t.base))
                .body(body.clone()),
        )
        .await;
    assert_eq!(
        (unsigned.status, unsigned.json["error"].as_str()),
        (401, Some("missing_signature_header"))
    );

    let first = t.post_batch("msg_original", &body).await;
    assert_eq!(
        (first.status, first.json["accepted"].as_i64()),
        (200, Some(1))
    );
    t.settle(1).await;

    // The forwarder re-sends the same batch (same webhook-id, fresh signature).
    let again = t.post_batch("msg_original", &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["duplicate_batch"], true);
    // A replayed dead-letter file: new webhook-id, same event id.
    let replayed = t.post_batch("msg_replayed", &body).await;
    assert_eq!(
        (
            replayed.json["accepted"].as_i64(),
            replayed.json["duplicates"].as_i64()
        ),
        (Some(0), Some(1))
    );
    // A replay that mixes that event with new ones (one four-row statement on SQLite, of
    // which the database skips one row): only the new ones are stored and counted.
    let mixed = batch(vec![
        envelope("r2", message(2002, 21, "new a")),
        envelope("r1", message(2001, 20, "once")),
        envelope("r3", message(2003, 21, "new b")),
        envelope("r4", message(2004, 21, "new c")),
    ]);
    let mixed = t.post_batch("msg_mixed", &mixed).await;
    assert_eq!(
        (
            mixed.json["accepted"].as_i64(),
            mixed.json["duplicates"].as_i64()
        ),
        (Some(3), Some(1)),
        "{backend:?}: {}",
        mixed.json
    );
    t.settle(4).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (runs, activity, newcomer) = t
        .query(|c| {
            (
                log_rows_for(c, 2001),
                tables::user_activity::activity_of(c, 2, 20).expect("q"),
                tables::user_activity::activity_of(c, 2, 21).expect("q"),
            )
        })
        .await;
    assert_eq!(
        runs.len(),
        2,
        "{backend:?}: message_logger and user_activity_tracker ran once"
    );
    assert_eq!(activity.map(|a| a.message_count), Some(1), "counted once");
    assert_eq!(newcomer.map(|a| a.message_count), Some(3), "{backend:?}");
    t.stop().await;
}

#[actix_web::test]
async fn client_mistakes_get_specific_errors() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .forwarder()
        .toml("[forwarder]\nmax_batch_events = 2\nmax_body_bytes = 4096\n")
        .start()
        .await;
    let cases = [
        ("not json", 400, "malformed_request"),
        (r#"{"events": {}}"#, 400, "malformed_request"),
        (
            r#"{"events": [{"v": 1, "type": "message", "realm": {"id": 2}, "event": {}}]}"#,
            400,
            "malformed_request",
        ),
    ];
    for (body, status, code) in cases {
        let answer = t.post_batch("msg_bad", body).await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let missing_id = t
        .post_batch(
            "msg_bad",
            r#"{"events": [{"v": 1, "type": "message", "realm": {"id": 2}, "event": {}}]}"#,
        )
        .await;
    assert!(
        missing_id.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("events[0]: `event_id` is missing")
    );

    // The routing header must agree with the signed body.
    let one = batch(vec![envelope("routed", message(77, 1, "x"))]);
    let routed = |realm: &str| {
        t.events_request("msg_routed", now_s(), &one, SECRET)
            .header("x-zulip-listeners-realm", realm)
    };
    let wrong = t.send(routed("3")).await;
    assert_eq!(wrong.status, 400);
    assert!(
        wrong.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("belongs to realm 2"),
        "{:?}",
        wrong.json
    );
    assert_eq!(t.send(routed("x")).await.status, 400);
    assert_eq!(t.send(routed("2")).await.status, 200);

    let three = batch(
        (0..3)
            .map(|i| envelope(&format!("m{i}"), message(i, 1, "x")))
            .collect(),
    );
    let answer = t.post_batch("msg_many", &three).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (413, Some("too_many_events"))
    );
    let big = batch(vec![envelope("big", message(1, 1, &"x".repeat(5000)))]);
    let answer = t.post_batch("msg_big", &big).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    t.stop().await;

    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db).start().await;
    let answer = t.post_batch("msg_off", &batch(vec![])).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (404, Some("not_found"))
    );
    t.stop().await;
}

backend_test!(async fn pure_handlers_run_at_intake_without_overtaking_a_busy_realm);
async fn pure_handlers_run_at_intake_without_overtaking_a_busy_realm(backend: Backend) {
    // keyword_alerts calls a slow webhook, so message events go to the inbox workers;
    // message_logger alone handles edits, which are processed at intake when nothing of their
    // realm is with a worker.
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(700)).await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(&format!(
            "[forwarder]\nlisteners = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
             [handlers.keyword_alerts]\nrules = [{{ name = \"all\", pattern = \".\", webhook = \"{}/a\" }}]\n",
            alerts.url
        ))
        .start()
        .await;

    // A reaction's handlers are all pure: processed and committed before the answer.
    let reaction = json!({"type": "reaction", "op": "add", "user_id": 11, "message_id": 4001, "emoji_name": "tada", "emoji_code": "1f389", "reaction_type": "unicode_emoji"});
    let answer = t
        .post_batch("msg_pure", &batch(vec![envelope("p1", reaction)]))
        .await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    assert_eq!(
        (
            answer.json["accepted"].as_i64(),
            answer.json["processed"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let (status, payload) = t.query(|c| inbox_status(c, "p1")).await;
    assert_eq!(
        status,
        InboxStatus::Done,
        "{backend:?}: done when acknowledged"
    );
    assert_eq!(payload, "", "a processed event's envelope is not kept");
    let activity = t
        .query(|c| tables::user_activity::activity_of(c, 2, 11).expect("q"))
        .await
        .expect("activity stored with the event");
    assert_eq!(activity.reaction_count, 1);

    // The message needs keyword_alerts: it goes to a worker (slow webhook). The edit that
    // follows must wait behind it, or it would reach a message not stored yet.
    let answer = t
        .post_batch(
            "msg_slow",
            &batch(vec![envelope("p2", message(4001, 10, "first words"))]),
        )
        .await;
    assert_eq!(
        answer.json["processed"], 0,
        "{backend:?}: {:?}",
        answer.json
    );
    let edit = json!({"type": "update_message", "user_id": 10, "edit_timestamp": 1700000200, "message_id": 4001, "message_ids": [4001], "rendering_only": false, "content": "second thoughts", "flags": []});
    let answer = t
        .post_batch("msg_edit", &batch(vec![envelope("p3", edit)]))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json["processed"], 0,
        "{backend:?}: an edit must not overtake its realm's message: {:?}",
        answer.json
    );
    t.settle(3).await;
    let stored = t
        .query(|c| {
            tables::messages::message_by_id(c, 4001)
                .expect("q")
                .expect("stored")
        })
        .await;
    assert_eq!(
        stored.content, "second thoughts",
        "{backend:?}: edit applied after the message"
    );
    let (status, payload) = t.query(|c| inbox_status(c, "p2")).await;
    assert_eq!(
        (status, payload.as_str()),
        (InboxStatus::Done, ""),
        "{backend:?}"
    );
    t.stop().await;
    alerts.stop().await;
}

backend_test!(async fn failures_are_retried_then_dead_and_replayable);
async fn failures_are_retried_then_dead_and_replayable(backend: Backend) {
    let alerts = Stub::failing().await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(&format!(
            "[forwarder]\nlisteners = [\"message_logger\", \"keyword_alerts\"]\nmax_retries = 2\nretry_delay = \"100ms\"\n\
             [handlers.keyword_alerts]\nrules = [{{ name = \"outage\", pattern = \"(?i)outage\", webhook = \"{}/alerts\" }}]\n",
            alerts.url
        ))
        .start()
        .await;
    let before = alerts.requests().len();
    let answer = t
        .post_batch(
            "msg_alert",
            &batch(vec![envelope(
                "a1",
                message(3001, 30, "Major OUTAGE in eu-west"),
            )]),
        )
        .await;
    assert_eq!(answer.status, 200);

    let mut counts = Vec::new();
    let dead = eventually(Duration::from_secs(15), async || {
        counts = t.query(inbox_counts).await;
        count_of(&counts, InboxStatus::Dead) == 1
    })
    .await;
    assert!(dead, "{backend:?}: {counts:?}");
    assert_eq!(
        alerts.requests().len() - before,
        3,
        "first attempt + 2 retries"
    );
    let failures = t.query(|c| log_rows_for(c, 3001)).await;
    assert_eq!(
        failures
            .iter()
            .filter(|(h, ok)| h == "keyword_alerts" && !ok)
            .count(),
        3
    );

    // The operator's tools, on the same database.
    let file = db.config_file("");
    let config = &file.path;
    let listed = cli(config, &["dead-letters", "list"]);
    assert!(
        listed.contains("a1") && listed.contains("alert webhook answered 500"),
        "{listed}"
    );

    alerts.set_status(200);
    let replayed = cli(config, &["dead-letters", "replay", "--id", "a1"]);
    assert!(
        replayed.starts_with("1 event(s) queued again"),
        "{replayed}"
    );
    let done = eventually(Duration::from_secs(15), async || {
        count_of(&t.query(inbox_counts).await, InboxStatus::Done) == 1
    })
    .await;
    assert!(done, "{backend:?}: replayed event processed");
    let alerted = t
        .query(|c| tables::keyword_alerts::alerted_rules(c, 3001).expect("q"))
        .await;
    assert!(alerted.contains("outage"));
    // Retries and the replay ran only the listener that failed: message_logger ran the
    // event once.
    let runs = t.query(|c| log_rows_for(c, 3001)).await;
    assert_eq!(
        runs.iter()
            .filter(|(h, _)| h == "message_logger")
            .collect::<Vec<_>>(),
        vec![&("message_logger".to_string(), true)],
        "{backend:?}: {runs:?}"
    );
    let sent = alerts.requests();
    let last: Value = serde_json::from_str(&sent.last().expect("alert").body).expect("json");
    assert_eq!(
        (last["rule"].as_str(), last["message"]["id"].as_i64()),
        (Some("outage"), Some(3001))
    );
    assert!(cli(config, &["dead-letters", "list"]).contains("No dead events"));
    t.stop().await;
    alerts.stop().await;
}

backend_test!(async fn nothing_acknowledged_is_lost_across_sigkill);
async fn nothing_acknowledged_is_lost_across_sigkill(backend: Backend) {
    // A slow alert target keeps events pending when the server is killed.
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_millis(100)).await;
    let db = TestDatabase::new(backend);
    let config = db.config_file(&format!(
        "[forwarder]\nsecrets = [\"{SECRET}\"]\nworkers = 1\nclaim_lease = \"1s\"\n\
         listeners = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
         [handlers.keyword_alerts]\nrules = [{{ name = \"all\", pattern = \".\", webhook = \"{}/a\" }}]\n",
        alerts.url
    ));
    let http = reqwest::Client::new();
    let mut server = ServerProcess::start(&config.path).await;

    let mut acknowledged = 0;
    for b in 0..5 {
        let envelopes = (0..20)
            .map(|i| {
                let id = 5000 + b * 20 + i;
                envelope(&format!("k{id}"), message(id, 40 + (id % 4), "hello"))
            })
            .collect();
        let body = batch(envelopes);
        let webhook_id = format!("msg_kill_{b}");
        let answer = signed_events(&http, &server.base, &webhook_id, now_s(), &body, SECRET)
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status(), 200);
        acknowledged += 20;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    drop(server);

    // Inspect the database directly: the kill left acknowledged events unprocessed.
    let mut conn = db.connect();
    let counts = inbox_counts(&mut conn);
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(
        total, acknowledged,
        "{backend:?}: every acknowledged event was stored"
    );
    assert!(
        count_of(&counts, InboxStatus::Pending) > 0,
        "{backend:?}: the kill must interrupt work: {counts:?}"
    );

    let server = ServerProcess::start(&config.path).await;
    let mut last = Vec::new();
    let all_done = eventually(Duration::from_secs(60), async || {
        last = inbox_counts(&mut conn);
        count_of(&last, InboxStatus::Done) == acknowledged
    })
    .await;
    assert!(all_done, "{backend:?}: {last:?}");
    drop(server);

    use zulip_listeners::db::schema::{keyword_alerts, messages};
    let stored: i64 = messages::table
        .count()
        .get_result(&mut conn)
        .expect("count");
    let alerts_recorded: i64 = keyword_alerts::table
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(
        (stored, alerts_recorded),
        (acknowledged, acknowledged),
        "{backend:?}"
    );
    for user in 40..44 {
        let activity = tables::user_activity::activity_of(&mut conn, 2, user)
            .expect("q")
            .expect("user");
        assert_eq!(
            activity.message_count,
            25,
            "{backend:?}: user {user} counted exactly once per message; runs: {:?}",
            repeated_runs(&mut conn)
        );
    }
    assert!(
        alerts.requests().len() >= acknowledged as usize,
        "every alert sent at least once"
    );
    drop(conn);
    alerts.stop().await;
}

/// Event-log rows of `user_activity_tracker` per message seen more than once, for diagnosis.
fn repeated_runs(conn: &mut DbConnection) -> Vec<(Option<i64>, Option<String>, bool, i64)> {
    use zulip_listeners::db::schema::event_log as log;
    let rows: Vec<(Option<i64>, Option<String>, bool, i64)> = log::table
        .filter(log::listener.eq("user_activity_tracker"))
        .select((
            log::message_id,
            log::event_id,
            log::success,
            log::created_at_ms,
        ))
        .load(conn)
        .expect("log");
    rows.iter()
        .filter(|r| rows.iter().filter(|o| o.0 == r.0).count() > 1)
        .cloned()
        .collect()
}

/// The forwarder's count of events it shed (`shed_before`, on the next envelope it queues) is
/// counted once per batch, not again when the batch is re-sent.
#[actix_web::test]
async fn events_the_forwarder_shed_are_counted_once() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db).forwarder().start().await;
    let shed_total = async || -> f64 {
        t.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("zulip_listeners_forwarder_shed_events_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = shed_total().await;
    let mut first = envelope("shed-1", message(9101, 10, "after a full queue"));
    first["shed_before"] = json!(7);
    let body = batch(vec![first]);
    assert_eq!(t.post_batch("msg_shed_1", &body).await.status, 200);
    // The same batch again (its webhook-id seen before): not counted twice.
    assert_eq!(t.post_batch("msg_shed_1", &body).await.status, 200);
    let mut second = envelope("shed-2", message(9102, 10, "later"));
    second["shed_before"] = json!(3);
    let plain = envelope("shed-3", message(9103, 10, "nothing shed"));
    assert_eq!(
        t.post_batch("msg_shed_2", &batch(vec![second, plain]))
            .await
            .status,
        200
    );
    assert_eq!(shed_total().await - before, 10.0);

    // A count that is not a non-negative integer is the client's mistake, named.
    let mut wrong = envelope("shed-4", message(9104, 10, "x"));
    wrong["shed_before"] = json!("many");
    let answer = t.post_batch("msg_shed_3", &batch(vec![wrong])).await;
    assert_eq!(answer.status, 400, "{:?}", answer.json);
    t.stop().await;
}
