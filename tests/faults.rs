//! Faults must stay contained: intake counts every event once, re-sent batches cost no
//! quota, a failing handler does not stall other realms, alerts are delivered once and cannot
//! inject mentions, and late results survive a graceful shutdown.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use diesel::prelude::*;
use serde_json::{Value, json};
use zulip_listeners::db::DbConnection;
use zulip_listeners::db::schema::inbox;
use zulip_listeners::verification::SigningKey;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn forwarder_config(extra: &str) -> String {
    format!("[forwarder]\nsecrets = [\"{SECRET}\"]\n{extra}")
}

/// An envelope v1 of realm `realm`, emitted `age_s` seconds ago.
fn envelope_in(event_id: &str, realm: i64, age_s: i64, event: Value) -> Value {
    let event_type = event["type"].as_str().unwrap_or_default().to_string();
    json!({
        "v": 1,
        "event_id": event_id,
        "emitted_at_ms": (now() - age_s) * 1000,
        "server": {"host": "chat.example.com", "zulip_version": "10.2", "feature_level": 334},
        "realm": {"id": realm, "uuid": "6a9b5f2e-7c1d-4e2b-9a43-0f7e1c2d3b4a", "string_id": format!("realm{realm}")},
        "type": event_type,
        "op": null,
        "audience": {"count": 2, "user_ids": [10, 11]},
        "event": event
    })
}

fn envelope(event_id: &str, event: Value) -> Value {
    envelope_in(event_id, 2, 0, event)
}

fn message(id: i64, sender: i64, content: &str) -> Value {
    json!({"type": "message", "flags": [], "message": {
        "id": id, "sender_id": sender, "sender_full_name": format!("User {sender}"),
        "sender_email": format!("user{sender}@acme.example.com"), "sender_realm_str": "acme",
        "avatar_url": null, "client": "website", "content": content, "content_type": "text/x-markdown",
        "rendered_content": format!("<p>{content}</p>"), "is_me_message": false, "reactions": [],
        "submessages": [], "recipient_id": 20, "subject": "greetings", "topic_links": [],
        "timestamp": 1700000000, "type": "stream", "display_recipient": "Denmark", "stream_id": 5}})
}

fn batch(envelopes: Vec<Value>) -> String {
    json!({ "events": envelopes }).to_string()
}

async fn post_batch(t: &TestServer, webhook_id: &str, body: &str) -> Answer {
    let key = SigningKey::parse(SECRET).expect("key");
    let timestamp = now();
    t.send(
        t.http
            .post(format!("{}/zulip/events", t.base))
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                key.sign(webhook_id, timestamp, body.as_bytes()),
            )
            .body(body.to_string()),
    )
    .await
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

fn inbox_status(c: &mut DbConnection, event_id: &str) -> (String, String) {
    inbox::table
        .filter(inbox::event_id.eq(event_id))
        .select((inbox::status, inbox::payload))
        .first(c)
        .expect("inbox row")
}

#[actix_web::test]
async fn every_event_of_a_batch_is_counted_in_exactly_one_bucket() {
    for backend in backends() {
        let db = TestDatabase::new(backend);
        let t = start_server(
            &db,
            &format!(
                "{}[filters]\nblocked_users = [99]\n[rate_limits.forwarder.per_user]\nper_minute = 1\nburst = 1\n",
                forwarder_config("")
            ),
        )
        .await;
        let first = post_batch(
            &t,
            "msg_sums_1",
            &batch(vec![
                envelope("filtered", message(1, 99, "blocked user")),
                envelope_in("expired", 2, 3 * 86_400, message(2, 10, "old")),
                envelope("limited_a", message(3, 20, "first of user 20")),
                envelope("limited_b", message(4, 20, "second of user 20")),
                envelope("fresh", message(5, 30, "hello")),
            ]),
        )
        .await;
        assert_eq!(first.status, 200, "{:?}", first.json);
        assert_eq!(buckets(&first), [2, 0, 1, 1, 1], "{:?}", first.json);

        // The same events again, one of them twice, plus one new: only duplicates and the
        // new one, whatever the stored events' status is.
        let again = post_batch(
            &t,
            "msg_sums_2",
            &batch(vec![
                envelope("filtered", message(1, 99, "blocked user")),
                envelope_in("expired", 2, 3 * 86_400, message(2, 10, "old")),
                envelope("limited_b", message(4, 20, "second of user 20")),
                envelope("limited_b", message(4, 20, "second of user 20")),
                envelope("fresh", message(5, 30, "hello")),
                envelope("new", message(6, 40, "new")),
            ]),
        )
        .await;
        assert_eq!(again.status, 200, "{:?}", again.json);
        assert_eq!(buckets(&again), [1, 5, 0, 0, 0], "{:?}", again.json);

        // A re-sent batch (same webhook-id) is all duplicates.
        let resent = post_batch(
            &t,
            "msg_sums_2",
            &batch(vec![
                envelope("filtered", message(1, 99, "blocked user")),
                envelope("new", message(6, 40, "new")),
            ]),
        )
        .await;
        assert_eq!(buckets(&resent), [0, 2, 0, 0, 0], "{:?}", resent.json);
        assert_eq!(resent.json["duplicate_batch"], true);
        t.stop().await;
    }
}

#[actix_web::test]
async fn resent_batches_and_events_consume_no_rate_limit_quota() {
    for backend in backends() {
        let db = TestDatabase::new(backend);
        let t = start_server(
            &db,
            &format!(
                "{}[rate_limits.forwarder.per_user]\nper_minute = 1\nburst = 3\n",
                forwarder_config("")
            ),
        )
        .await;
        let two = batch(vec![
            envelope("q1", message(11, 77, "one")),
            envelope("q2", message(12, 77, "two")),
        ]);
        let answer = post_batch(&t, "msg_quota", &two).await;
        assert_eq!(buckets(&answer), [2, 0, 0, 0, 0], "{:?}", answer.json);
        for _ in 0..4 {
            let answer = post_batch(&t, "msg_quota", &two).await;
            assert_eq!(answer.json["duplicate_batch"], true);
        }
        for i in 0..3 {
            let answer = post_batch(&t, &format!("msg_quota_again_{i}"), &two).await;
            assert_eq!(buckets(&answer), [0, 2, 0, 0, 0], "{:?}", answer.json);
        }
        // The user's third cell is still there.
        let fresh = post_batch(
            &t,
            "msg_quota_fresh",
            &batch(vec![envelope("q3", message(13, 77, "three"))]),
        )
        .await;
        assert_eq!(buckets(&fresh), [1, 0, 0, 0, 0], "{:?}", fresh.json);
        // The fourth is over quota, stored with its envelope for a replay.
        let over = post_batch(
            &t,
            "msg_quota_over",
            &batch(vec![envelope("q4", message(14, 77, "four"))]),
        )
        .await;
        assert_eq!(buckets(&over), [0, 0, 0, 0, 1], "{:?}", over.json);
        let (status, payload) = t.query(|c| inbox_status(c, "q4")).await;
        assert_eq!(status, "rate_limited");
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
}
