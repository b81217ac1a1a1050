//! Statistics aggregation and data retention (`zulip_listeners::db::retention`) against a real
//! database: SQLite always, PostgreSQL too when `ZULIP_LISTENERS_TEST_PG_URL` is set.
//!
//! Long file: aggregation and retention against both backends, with the row builders they share, one scenario per test.

use crate::support::*;
use diesel::prelude::*;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::retention::{
    CleanupReport, PersonalCutoffs, PersonalReport, cleanup, expire_personal_data,
};
use zulip_listeners::db::schema::{
    event_log, forwarder_batches, inbox, keyword_alerts, listener_stats, messages,
    outgoing_replies, user_activity,
};
use zulip_listeners::db::tables::listener_stats::{StatsRow, aggregate_stats, stats_since};
use zulip_listeners::db::tables::{
    event_log::EventLogRow, inbox::NewInboxRow, keyword_alerts::AlertRecord, messages::MessageRow,
    replies::ReplyRecord,
};
use zulip_listeners::db::{DbConnection, DbError};

/// One minute, the interval used throughout.
const I: i64 = 60_000;
/// A start of an interval (a multiple of `I`) in November 2023.
const BASE: i64 = 1_699_999_980_000;

fn log(conn: &mut DbConnection, handler: &str, at_ms: i64, duration_us: i64, success: bool) {
    let row = EventLogRow {
        id: 0,
        listener: handler.to_string(),
        source: "test".into(),
        event_type: "message".to_string(),
        bot: None,
        realm: None,
        realm_id: None,
        user_id: None,
        message_id: None,
        event_id: None,
        duration_us,
        success,
        error: (!success).then(|| "failed".to_string()),
        created_at_ms: at_ms,
    };
    diesel::insert_into(event_log::table)
        .values(&row)
        .execute(conn)
        .expect("insert event log row");
}

fn stats_row(
    handler: &str,
    start: i64,
    runs: i64,
    failures: i64,
    total: i64,
    max: i64,
) -> StatsRow {
    StatsRow {
        listener: handler.to_string(),
        interval_start_ms: start,
        interval_ms: I,
        runs,
        failures,
        total_duration_us: total,
        max_duration_us: max,
        updated_at_ms: 0,
    }
}

/// The stored statistics with `updated_at_ms` checked against `now` and then blanked.
fn stats(conn: &mut DbConnection, now: i64) -> Vec<StatsRow> {
    stats_since(conn, 0)
        .expect("stats")
        .into_iter()
        .map(|mut row| {
            assert_eq!(
                row.updated_at_ms, now,
                "{row:?} was written by the last run"
            );
            row.updated_at_ms = 0;
            row
        })
        .collect()
}

fn inbox_event(conn: &mut DbConnection, event_id: &str, status: InboxStatus, updated_at_ms: i64) {
    let row = NewInboxRow {
        event_id: event_id.to_string(),
        event_key: EventKey::of(event_id),
        webhook_id: "msg_test".to_string(),
        realm_id: 2,
        realm: "zulip".to_string(),
        user_id: Some(10),
        event_type: "message".to_string(),
        op: None,
        payload: "{}".to_string(),
        status,
        attempts: 1,
        next_attempt_at_ms: 0,
        claimed_until_ms: 0,
        last_error: None,
        emitted_at_ms: None,
        received_at_ms: updated_at_ms,
        updated_at_ms,
        message_id: None,
        erases: Vec::new(),
    };
    diesel::insert_into(inbox::table)
        .values(&row)
        .execute(conn)
        .expect("insert inbox row");
}

fn batch(conn: &mut DbConnection, webhook_id: &str, received_at_ms: i64) {
    diesel::insert_into(forwarder_batches::table)
        .values((
            forwarder_batches::webhook_id.eq(webhook_id),
            forwarder_batches::events.eq(1),
            forwarder_batches::received_at_ms.eq(received_at_ms),
        ))
        .execute(conn)
        .expect("insert forwarder batch");
}

fn reply(conn: &mut DbConnection, bot: &str, message_id: i64, created_at_ms: i64) {
    diesel::insert_into(outgoing_replies::table)
        .values(ReplyRecord {
            bot: bot.to_string(),
            message_id,
            response: "{}".to_string(),
            created_at_ms,
        })
        .execute(conn)
        .expect("insert reply");
}

fn stored_stats(conn: &mut DbConnection, handler: &str, start: i64) {
    diesel::insert_into(listener_stats::table)
        .values(stats_row(handler, start, 1, 0, 1, 1))
        .execute(conn)
        .expect("insert stats row");
}

fn no_progress() -> impl FnMut(&str, usize) {
    |_: &str, _: usize| {}
}

backend_test!(fn aggregation_counts_completed_intervals_per_handler);
fn aggregation_counts_completed_intervals_per_handler(backend: Backend) {
    let db = TestDatabase::new(backend);
    let conn = &mut db.connect();

    assert_eq!(aggregate_stats(conn, I, BASE + 10 * I).expect("empty"), 0);
    assert!(matches!(
        aggregate_stats(conn, 0, BASE),
        Err(DbError::Invalid(_))
    ));

    // Interval 0: `a` three runs (one failed), `b` one failed run.
    log(conn, "a", BASE, 100, true);
    log(conn, "a", BASE + 20_000, 300, false);
    log(conn, "b", BASE + 30_000, 50, false);
    log(conn, "a", BASE + I - 1, 200, true);
    // Interval 1, from its first to its last millisecond.
    log(conn, "a", BASE + I, 1_000, true);
    log(conn, "a", BASE + 2 * I - 1, 10, true);
    // Interval 2 is still open at `now` (it starts at `now`).
    log(conn, "a", BASE + 2 * I, 5, true);
    log(conn, "b", BASE + 2 * I + 10, 5, false);

    let now = BASE + 2 * I;
    assert_eq!(
        aggregate_stats(conn, I, now).expect("aggregate"),
        3,
        "{backend:?}"
    );
    let expected = vec![
        stats_row("a", BASE, 3, 1, 600, 300),
        stats_row("b", BASE, 1, 1, 50, 50),
        stats_row("a", BASE + I, 2, 0, 1_010, 1_000),
    ];
    assert_eq!(stats(conn, now), expected, "{backend:?}");

    // Idempotent: the same run again rewrites the same rows.
    assert_eq!(
        aggregate_stats(conn, I, now).expect("again"),
        3,
        "{backend:?}"
    );
    assert_eq!(stats(conn, now), expected, "{backend:?}");

    // Ordered by interval, then handler; `since` is inclusive.
    let since: Vec<(String, i64)> = stats_since(conn, BASE + I)
        .expect("since")
        .into_iter()
        .map(|r| (r.listener, r.interval_start_ms))
        .collect();
    assert_eq!(since, vec![("a".to_string(), BASE + I)], "{backend:?}");
}

backend_test!(fn late_rows_are_counted_by_the_next_run);
fn late_rows_are_counted_by_the_next_run(backend: Backend) {
    let db = TestDatabase::new(backend);
    let conn = &mut db.connect();
    log(conn, "a", BASE + 1, 100, true);
    log(conn, "a", BASE + I + 1, 200, true);
    let now = BASE + 2 * I + 1;
    assert_eq!(aggregate_stats(conn, I, now).expect("aggregate"), 2);

    // Committed late into both aggregated intervals (the latest and the one before), by
    // a handler already known and by a new one; and one into the interval still open.
    log(conn, "a", BASE + I + 2, 700, false);
    log(conn, "c", BASE + 5, 30, true);
    log(conn, "a", BASE + 2 * I + 1, 1, true);
    let later = BASE + 2 * I + 2;
    assert_eq!(aggregate_stats(conn, I, later).expect("next run"), 3);
    assert_eq!(
        stats(conn, later),
        vec![
            stats_row("a", BASE, 1, 0, 100, 100),
            stats_row("c", BASE, 1, 0, 30, 30),
            stats_row("a", BASE + I, 2, 1, 900, 700),
        ],
        "{backend:?}"
    );

    // Once interval 2 is complete it is aggregated, with the window starting one
    // interval before the latest aggregated one (interval 1): interval 0 is recomputed.
    let next = BASE + 3 * I;
    assert_eq!(aggregate_stats(conn, I, next).expect("interval 2"), 4);
    // The next run starts at interval 1, so a row arriving that late in interval 0 is not
    // counted (the bound on the work).
    log(conn, "a", BASE + 9, 1, true);
    let last = BASE + 4 * I;
    assert_eq!(aggregate_stats(conn, I, last).expect("interval 3"), 2);
    let summary: Vec<(String, i64, i64, i64)> = stats_since(conn, 0)
        .expect("stats")
        .iter()
        .map(|r| {
            (
                r.listener.clone(),
                r.interval_start_ms,
                r.runs,
                r.updated_at_ms,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a".to_string(), BASE, 1, next),
            ("c".to_string(), BASE, 1, next),
            ("a".to_string(), BASE + I, 2, last),
            ("a".to_string(), BASE + 2 * I, 1, last),
        ],
        "{backend:?}"
    );
}

backend_test!(fn cleanup_deletes_exactly_the_old_finished_rows);
fn cleanup_deletes_exactly_the_old_finished_rows(backend: Backend) {
    let db = TestDatabase::new(backend);
    let conn = &mut db.connect();
    let before = 1_000_000;
    let recent = 2_000_000;

    log(conn, "a", before - 1, 1, true);
    log(conn, "a", recent, 1, true);
    log(conn, "b", 5, 1, false);
    log(conn, "b", before, 1, true);

    for status in [
        InboxStatus::Done,
        InboxStatus::Expired,
        InboxStatus::Filtered,
        InboxStatus::Pending,
        InboxStatus::Dead,
        InboxStatus::RateLimited,
        InboxStatus::Parked,
    ] {
        inbox_event(conn, &format!("old-{status}"), status, 500);
    }
    inbox_event(conn, "recent-done", InboxStatus::Done, recent);
    inbox_event(
        conn,
        "recent-rate_limited",
        InboxStatus::RateLimited,
        recent,
    );

    batch(conn, "msg_old_1", 1);
    batch(conn, "msg_new", recent);
    batch(conn, "msg_old_2", before - 1);

    reply(conn, "bot1", 1, 10);
    reply(conn, "bot2", 1, 20);
    reply(conn, "bot1", 2, 30);
    reply(conn, "bot1", 3, recent);

    stored_stats(conn, "a", 0);
    stored_stats(conn, "b", 0);
    stored_stats(conn, "a", before);

    assert!(matches!(
        cleanup(conn, before, 0, &mut no_progress()),
        Err(DbError::Invalid(_))
    ));

    let mut tables = Vec::new();
    let report = cleanup(conn, before, 100, &mut |table: &str, _: usize| {
        tables.push(table.to_string())
    })
    .expect("cleanup");
    assert_eq!(
        report,
        CleanupReport {
            event_log: 2,
            inbox: 4,
            inbox_erased: 3,
            forwarder_batches: 2,
            outgoing_replies: 3,
            listener_stats: 2,
        },
        "{backend:?}"
    );
    assert_eq!(report.total(), 13);
    assert_eq!(
        tables,
        [
            "event_log",
            "inbox",
            "inbox envelopes",
            "forwarder_batches",
            "outgoing_replies",
            "listener_stats"
        ],
        "{backend:?}: one batch per table"
    );

    let log_left: Vec<i64> = event_log::table
        .select(event_log::created_at_ms)
        .order(event_log::created_at_ms)
        .load(conn)
        .expect("event log");
    assert_eq!(log_left, vec![before, recent], "{backend:?}");
    let inbox_left: Vec<String> = inbox::table
        .select(inbox::event_id)
        .order(inbox::event_id)
        .load::<EventKey>(conn)
        .expect("inbox")
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        inbox_left,
        [
            "old-dead",
            "old-parked",
            "old-pending",
            "recent-done",
            "recent-rate_limited"
        ],
        "{backend:?}: events still to be processed or looked at are kept; old rate-limited ones (with their payload) are not"
    );
    let kept: Vec<String> = inbox::table
        .select(inbox::payload)
        .filter(inbox::status.eq_any([
            InboxStatus::Dead,
            InboxStatus::Parked,
            InboxStatus::Pending,
        ]))
        .load(conn)
        .expect("payloads");
    assert_eq!(
        kept,
        vec![r#"{"content_removed":"retention"}"#; 3],
        "{backend:?}: the old ones kept lose their content"
    );
    let batches_left: Vec<String> = forwarder_batches::table
        .select(forwarder_batches::webhook_id)
        .load(conn)
        .expect("batches");
    assert_eq!(batches_left, ["msg_new"], "{backend:?}");
    let replies_left: Vec<(String, i64)> = outgoing_replies::table
        .select((outgoing_replies::bot, outgoing_replies::message_id))
        .load(conn)
        .expect("replies");
    assert_eq!(replies_left, [("bot1".to_string(), 3)], "{backend:?}");
    let stats_left: Vec<(String, i64)> = listener_stats::table
        .select((listener_stats::listener, listener_stats::interval_start_ms))
        .load(conn)
        .expect("stats");
    assert_eq!(stats_left, [("a".to_string(), before)], "{backend:?}");

    // Nothing is left to delete.
    let again = cleanup(conn, before, 100, &mut no_progress()).expect("again");
    assert_eq!(again, CleanupReport::default(), "{backend:?}");
}

backend_test!(fn cleanup_works_in_batches);
fn cleanup_works_in_batches(backend: Backend) {
    let db = TestDatabase::new(backend);
    let conn = &mut db.connect();
    let before = 1_000_000;
    let recent = 2_000_000;
    // Old rows interleaved with recent ones, so that batches meet rows they must keep.
    for i in 0..10 {
        log(conn, "a", i, 1, true);
        log(conn, "a", recent + i, 1, true);
        inbox_event(conn, &format!("old-{i}"), InboxStatus::Done, i);
        inbox_event(conn, &format!("new-{i}"), InboxStatus::Done, recent);
        inbox_event(conn, &format!("pending-{i}"), InboxStatus::Pending, i);
        reply(conn, if i % 2 == 0 { "bot1" } else { "bot2" }, i, i);
        reply(conn, "bot3", i, recent);
        stored_stats(conn, &format!("h{}", i % 3), i * I);
    }
    // Exactly three batches' worth: the last batch finds nothing.
    for i in 0..9 {
        batch(conn, &format!("msg_old_{i}"), i);
        batch(conn, &format!("msg_new_{i}"), recent);
    }
    stored_stats(conn, "h0", before);
    stored_stats(conn, "h0", before + I);

    let mut calls: Vec<(String, usize)> = Vec::new();
    let report = cleanup(conn, before, 3, &mut |table: &str, deleted: usize| {
        calls.push((table.to_string(), deleted))
    })
    .expect("cleanup");
    let progress_of = |table: &str| -> Vec<usize> {
        calls
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(progress_of("event_log"), [3, 6, 9, 10], "{backend:?}");
    assert_eq!(progress_of("inbox"), [3, 6, 9, 10], "{backend:?}");
    assert_eq!(
        progress_of("forwarder_batches"),
        [3, 6, 9, 9],
        "{backend:?}"
    );
    assert_eq!(
        progress_of("outgoing_replies"),
        [3, 6, 9, 10],
        "{backend:?}"
    );
    assert_eq!(progress_of("listener_stats"), [3, 6, 9, 10], "{backend:?}");
    assert_eq!(progress_of("inbox envelopes"), [3, 6, 9, 10], "{backend:?}");
    assert_eq!(
        report,
        CleanupReport {
            event_log: 10,
            inbox: 10,
            inbox_erased: 10,
            forwarder_batches: 9,
            outgoing_replies: 10,
            listener_stats: 10,
        },
        "{backend:?}"
    );

    let counts = |conn: &mut DbConnection| -> [i64; 5] {
        [
            event_log::table.count().get_result(conn).expect("count"),
            inbox::table.count().get_result(conn).expect("count"),
            forwarder_batches::table
                .count()
                .get_result(conn)
                .expect("count"),
            outgoing_replies::table
                .count()
                .get_result(conn)
                .expect("count"),
            listener_stats::table
                .count()
                .get_result(conn)
                .expect("count"),
        ]
    };
    assert_eq!(counts(conn), [10, 20, 9, 10, 2], "{backend:?}");
    let old_left: i64 = inbox::table
        .filter(inbox::status.eq(InboxStatus::Done))
        .filter(inbox::updated_at_ms.lt(before))
        .count()
        .get_result(conn)
        .expect("count");
    assert_eq!(old_left, 0, "{backend:?}");

    let starts: Vec<i64> = listener_stats::table
        .select(listener_stats::interval_start_ms)
        .order(listener_stats::interval_start_ms)
        .load(conn)
        .expect("stats");
    assert_eq!(starts, [before, before + I], "{backend:?}");
}

/// A message as `message_logger` stores it, stored at `stored_at_ms`.
fn stored_message(conn: &mut DbConnection, id: i64, stored_at_ms: i64) {
    let row = MessageRow {
        message_id: id,
        realm: "zulip".to_string(),
        realm_id: Some(2),
        message_type: "private".to_string(),
        stream_id: None,
        channel: None,
        topic: Some("secret plans".to_string()),
        dm_recipients: Some("[10, 11]".to_string()),
        sender_id: Some(10),
        sender_email: Some("alice@example.com".to_string()),
        sender_name: Some("Alice".to_string()),
        content: format!("message {id}: my password is hunter2"),
        content_truncated: false,
        sent_at: Some(stored_at_ms / 1000),
        source: "forwarder".into(),
        deleted: false,
        edited_at: None,
        stored_at_ms,
    };
    diesel::insert_into(messages::table)
        .values(&row)
        .execute(conn)
        .expect("insert message");
}

fn activity(conn: &mut DbConnection, realm_id: i64, user_id: i64, last_seen_ms: i64) {
    diesel::insert_into(user_activity::table)
        .values((
            user_activity::realm_id.eq(realm_id),
            user_activity::user_id.eq(user_id),
            user_activity::last_seen_ms.eq(last_seen_ms),
            user_activity::message_count.eq(1i64),
            user_activity::reaction_count.eq(0i64),
        ))
        .execute(conn)
        .expect("insert activity");
}

fn alert(conn: &mut DbConnection, rule: &str, message_id: i64, sent_at_ms: i64) {
    diesel::insert_into(keyword_alerts::table)
        .values(AlertRecord {
            rule: rule.to_string(),
            message_id,
            realm: "zulip".to_string(),
            target: "webhook https://hooks.example.com".to_string(),
            sent_at_ms,
        })
        .execute(conn)
        .expect("insert alert");
}

/// (id, content, topic, dm_recipients, sender_email, sender_name, sender_id) of every message.
type Kept = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn message_rows(conn: &mut DbConnection) -> Vec<Kept> {
    messages::table
        .select((
            messages::message_id,
            messages::content,
            messages::topic,
            messages::dm_recipients,
            messages::sender_email,
            messages::sender_name,
            messages::sender_id,
        ))
        .order(messages::message_id)
        .load(conn)
        .expect("messages")
}

backend_test!(fn personal_data_is_erased_or_deleted_after_its_own_period);
fn personal_data_is_erased_or_deleted_after_its_own_period(backend: Backend) {
    let db = TestDatabase::new(backend);
    let conn = &mut db.connect();
    let messages_before = BASE + 100 * I;
    let activity_before = BASE + 50 * I;
    let alerts_before = BASE + 20 * I;
    // Seven messages on either side of the cut-off, five users, six alerts.
    for id in 1..=7 {
        stored_message(conn, id, messages_before - 7 * I + id * I);
    }
    for user in 1..=5 {
        activity(conn, 2 + user % 2, user, activity_before - 3 * I + user * I);
    }
    for (i, rule) in ["a", "b", "a", "b", "a", "b"].iter().enumerate() {
        alert(conn, rule, i as i64, alerts_before - 3 * I + i as i64 * I);
    }

    // Nothing is touched while every period is 0 (keep).
    let report = expire_personal_data(conn, &PersonalCutoffs::default(), 2, &mut no_progress())
        .expect("retention");
    assert_eq!(report, PersonalReport::default(), "{backend:?}");

    let cutoffs = PersonalCutoffs {
        messages: Some(messages_before),
        activity: Some(activity_before),
        alerts: Some(alerts_before),
    };
    let mut calls = Vec::new();
    let report = expire_personal_data(conn, &cutoffs, 2, &mut |table: &str, n: usize| {
        calls.push((table.to_string(), n))
    })
    .expect("retention");
    assert_eq!(
        report,
        PersonalReport {
            messages_erased: 7 - 1,
            user_activity: 2,
            keyword_alerts: 3,
        },
        "{backend:?}"
    );
    assert!(
        calls.iter().any(|(t, n)| t == "messages" && *n == 2),
        "worked in batches of 2: {calls:?}"
    );

    let rows = message_rows(conn);
    assert_eq!(rows.len(), 7, "{backend:?}: tombstones stay");
    for (id, content, topic, dm, email, name, sender) in &rows {
        if *id < 7 {
            assert_eq!(
                (content.as_str(), topic, dm, email, name),
                ("", &None, &None, &None, &None),
                "{backend:?}: message {id} erased"
            );
            assert_eq!(*sender, Some(10), "ids are kept");
        } else {
            assert!(
                content.contains("hunter2"),
                "{backend:?}: message 7 is recent"
            );
            assert_eq!(email.as_deref(), Some("alice@example.com"));
        }
    }
    let users: Vec<i64> = user_activity::table
        .select(user_activity::user_id)
        .order(user_activity::user_id)
        .load(conn)
        .expect("activity");
    assert_eq!(users, [3, 4, 5], "{backend:?}");
    let alerts: Vec<i64> = keyword_alerts::table
        .select(keyword_alerts::message_id)
        .order(keyword_alerts::message_id)
        .load(conn)
        .expect("alerts");
    assert_eq!(alerts, [3, 4, 5], "{backend:?}");

    // A second pass finds nothing left to do.
    let again = expire_personal_data(conn, &cutoffs, 2, &mut no_progress()).expect("again");
    assert_eq!(again, PersonalReport::default(), "{backend:?}");
}

#[test]
fn the_cleanup_command_applies_the_personal_data_settings() {
    let db = TestDatabase::new(Backend::Sqlite);
    let now = zulip_listeners::clock::now_ms();
    let day = 86_400_000;
    {
        let conn = &mut db.connect();
        stored_message(conn, 1, now - 31 * day);
        stored_message(conn, 2, now - day);
        activity(conn, 2, 1, now - 91 * day);
        activity(conn, 2, 2, now - 89 * day);
        alert(conn, "r", 1, now - 31 * day);
        alert(conn, "r", 2, now - 29 * day);
    }
    let config = db.config_file("");
    // The general period is long; the personal-data defaults (30/90/30 days) still apply.
    let out = cli(&config.path, &["cleanup", "--days", "365"]);
    assert!(out.contains("1 message(s) erased"), "{out}");
    let conn = &mut db.connect();
    let rows = message_rows(conn);
    assert_eq!(rows[0].1, "", "old message erased: {rows:?}");
    assert!(rows[1].1.contains("hunter2"), "recent message kept");
    let users: Vec<i64> = user_activity::table
        .select(user_activity::user_id)
        .load(conn)
        .expect("activity");
    assert_eq!(users, [2]);
    let alerts: Vec<i64> = keyword_alerts::table
        .select(keyword_alerts::message_id)
        .load(conn)
        .expect("alerts");
    assert_eq!(alerts, [2]);
}
