//! A message deleted in Zulip leaves no trace of its text anywhere in the database, whatever
//! became of its events before the deletion arrived (done, pending, parked, dead, filtered,
//! expired, rate-limited), checked the way a privacy audit would: every column of every table
//! searched for a word only the message said. Also: a listener that later runs the erased
//! envelope stores no text, a scoped `message_logger` applies deletions, the outgoing path's
//! copies go, `cleanup --days 0` leaves no text in the inbox, filtered events are stored
//! without their envelope and still de-duplicated, and the look-up by message id is indexed.

use std::time::Duration;

use crate::support::*;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::{Value, json};
use zulip_listeners::db::DbConnection;
use zulip_listeners::db::tables::messages::message_by_id;

/// The message every scenario deletes.
const ID: i64 = 7301;

/// A message from user 10 in #Denmark whose content (and rendering) holds `word`.
fn secret_message(word: &str) -> Value {
    message(ID, 10, &format!("the password is {word}"))
}

/// The deletion of [`ID`] as Zulip sends it: no user, the channel by id only.
fn deletion() -> Value {
    json!({"type": "delete_message", "message_ids": [ID], "message_type": "stream",
           "stream_id": 5, "topic": "greetings"})
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    tbl: String,
    #[diesel(sql_type = Text)]
    col: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Every column of every table of the database.
fn columns(c: &mut DbConnection) -> Vec<(String, String)> {
    let sql = match c {
        DbConnection::Sqlite(_) => {
            "SELECT m.name AS tbl, p.name AS col FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table'"
        }
        DbConnection::Postgres(_) => {
            "SELECT table_name::text AS tbl, column_name::text AS col \
             FROM information_schema.columns WHERE table_schema = current_schema()"
        }
    };
    diesel::sql_query(sql)
        .load::<Column>(c)
        .expect("columns")
        .into_iter()
        .map(|c| (c.tbl, c.col))
        .collect()
}

/// `table.column` (with the number of rows) of every stored value that contains `word`.
fn where_found(c: &mut DbConnection, word: &str) -> Vec<String> {
    let mut found = Vec::new();
    let columns = columns(c);
    assert!(columns.len() > 40, "every table is searched: {columns:?}");
    for (table, column) in columns {
        let n = diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM \"{table}\" WHERE CAST(\"{column}\" AS TEXT) LIKE '%{word}%'"
        ))
        .get_result::<Count>(c)
        .expect("search")
        .n;
        if n > 0 {
            found.push(format!("{table}.{column} ({n})"));
        }
    }
    found
}

/// What became of the message's events before the deletion arrived.
#[derive(Debug, Clone, Copy)]
enum Before {
    /// Processed (message_logger keeps it).
    Done,
    /// Tried once by a failing listener, to be retried in an hour.
    Pending,
    /// Waiting behind a listener disabled after failures.
    Parked,
    /// Retries used up.
    Dead,
    /// Its realm is not allowed (so is the deletion's).
    Filtered,
    /// Too old when received, and so was an edit of it.
    Expired,
    /// Over the sender's quota.
    RateLimited,
}

/// The server for a scenario: message_logger, and keyword_alerts alerting a failing `target`
/// on passwords where the scenario needs a failing listener.
fn app(db: &TestDatabase, before: Before, target: &Stub) -> TestApp {
    let alerts = format!(
        "[handlers.keyword_alerts]\nrules = [{{ name = \"secret\", pattern = \"password\", webhook = \"{}/alert\" }}]\n",
        target.url
    );
    let failing = |forwarder: &str| {
        format!(
            "[forwarder]\nlisteners = [\"message_logger\", \"keyword_alerts\"]\nworkers = 1\n{forwarder}{alerts}"
        )
    };
    let toml = match before {
        Before::Done | Before::Expired => {
            "[forwarder]\nlisteners = [\"message_logger\"]\n".to_string()
        }
        Before::Pending => failing("retry_delay = \"1h\"\nmax_retries = 5\n"),
        Before::Dead => failing("max_retries = 0\n"),
        Before::Parked => failing(
            "retry_delay = \"100ms\"\nmax_retries = 50\n\
             [error_handling]\nbreaker_failures = 100\nmax_failures_per_hour = 2\n",
        ),
        Before::Filtered => {
            "[forwarder]\nlisteners = [\"message_logger\"]\n[filters]\nallowed_realms = [99]\n"
                .to_string()
        }
        Before::RateLimited => "[forwarder]\nlisteners = [\"message_logger\"]\n\
             [rate_limits.forwarder.per_user]\nper_minute = 1\nburst = 1\n"
            .to_string(),
    };
    TestApp::new(db).forwarder().admin().toml(&toml)
}

/// Stores the message so that it ends as `before` says, then deletes it in Zulip: no value in
/// the database says the word any more. Returns the server, still running.
async fn deleted_after(backend: Backend, before: Before, db: &TestDatabase) -> TestServer {
    let word = format!("Kestrel{before:?}Oq7");
    let target = Stub::failing().await;
    let t = app(db, before, &target).start().await;
    let mut first = vec![];
    if matches!(before, Before::RateLimited) {
        // The sender's one event a minute.
        first.push(envelope("warm-up", message(ID - 1, 10, "hello")));
    }
    first.push(match before {
        Before::Expired => Envelope::new("m", secret_message(&word))
            .emitted_at_ms((now_s() - 3 * 86_400) * 1000)
            .json(),
        _ => envelope("m", secret_message(&word)),
    });
    if matches!(before, Before::Expired) {
        let edit = json!({"type": "update_message", "user_id": 10, "edit_timestamp": 1700000100,
            "message_id": ID, "message_ids": [ID], "rendering_only": false,
            "orig_content": format!("the password is {word}"),
            "orig_rendered_content": format!("<p>the password is {word}</p>"),
            "prev_content": format!("the password is {word}"),
            "content": format!("the password was {word}"),
            "rendered_content": format!("<p>the password was {word}</p>"), "flags": []});
        first.push(
            Envelope::new("e", edit)
                .emitted_at_ms((now_s() - 3 * 86_400) * 1000)
                .json(),
        );
    }
    let answer = t.post_events("msg_before", first).await;
    assert_eq!(
        answer.status, 200,
        "{backend:?} {before:?}: {:?}",
        answer.json
    );

    let wanted = match before {
        Before::Done => InboxStatus::Done,
        Before::Pending => InboxStatus::Pending,
        Before::Parked => InboxStatus::Parked,
        Before::Dead => InboxStatus::Dead,
        Before::Filtered => InboxStatus::Filtered,
        Before::Expired => InboxStatus::Expired,
        Before::RateLimited => InboxStatus::RateLimited,
    };
    let mut last = None;
    let reached = eventually(Duration::from_secs(20), async || {
        let (status, _) = t.query(|c| inbox_status(c, "m")).await;
        last = Some(status);
        let tried = t
            .query(|c| {
                use zulip_listeners::db::schema::inbox;
                inbox::table
                    .filter(inbox::attempts.ge(1))
                    .filter(inbox::status.eq(InboxStatus::Pending))
                    .count()
                    .get_result::<i64>(c)
                    .expect("count")
            })
            .await;
        last == Some(wanted) && (wanted != InboxStatus::Pending || tried == 1)
    })
    .await;
    assert!(
        reached,
        "{backend:?}: the message is {last:?}, not {wanted}"
    );
    let search = word.clone();
    let stored = t.query(move |c| where_found(c, &search)).await;
    if matches!(before, Before::Filtered) {
        assert!(
            stored.is_empty(),
            "{backend:?}: a filtered event keeps no envelope: {stored:?}"
        );
    } else {
        assert!(
            !stored.is_empty(),
            "{backend:?} {before:?}: the text was stored before its deletion"
        );
    }

    let answer = t
        .post_events("msg_delete", vec![envelope("d", deletion())])
        .await;
    assert_eq!(
        answer.status, 200,
        "{backend:?} {before:?}: {:?}",
        answer.json
    );
    let settled = eventually(Duration::from_secs(20), async || {
        t.query(|c| inbox_status(c, "d")).await.0 != InboxStatus::Pending
    })
    .await;
    assert!(
        settled,
        "{backend:?} {before:?}: the deletion was processed"
    );
    let left = t.query(move |c| where_found(c, &word)).await;
    assert!(
        left.is_empty(),
        "{backend:?} {before:?}: the deleted message's text is still in {left:?}"
    );
    // Processing state is kept: the message's event is where it was.
    assert_eq!(
        t.query(|c| inbox_status(c, "m")).await.0,
        wanted,
        "{backend:?} {before:?}"
    );
    target.stop().await;
    t
}

backend_test!(async fn a_deleted_message_leaves_no_text_once_processed);
async fn a_deleted_message_leaves_no_text_once_processed(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = deleted_after(backend, Before::Done, &db).await;
    let m = t
        .query(|c| message_by_id(c, ID).expect("q"))
        .await
        .expect("tombstone");
    assert!(m.deleted && m.content.is_empty(), "{backend:?}: {m:?}");
    t.stop().await;
}

backend_test!(async fn a_deleted_message_leaves_no_text_while_pending);
async fn a_deleted_message_leaves_no_text_while_pending(backend: Backend) {
    let db = TestDatabase::new(backend);
    deleted_after(backend, Before::Pending, &db)
        .await
        .stop()
        .await;
}

backend_test!(async fn a_deleted_message_leaves_no_text_while_parked);
async fn a_deleted_message_leaves_no_text_while_parked(backend: Backend) {
    let db = TestDatabase::new(backend);
    deleted_after(backend, Before::Parked, &db)
        .await
        .stop()
        .await;
}

backend_test!(async fn a_deleted_message_leaves_no_text_in_a_dead_letter);
async fn a_deleted_message_leaves_no_text_in_a_dead_letter(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = deleted_after(backend, Before::Dead, &db).await;
    // The dead letter is still listed, with its metadata.
    let listed = t
        .send(t.admin(reqwest::Method::GET, "/admin/dead-letters?status=dead"))
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    assert_eq!(
        listed.json["events"][0]["event_id"], "m",
        "{:?}",
        listed.json
    );
    t.stop().await;
}

backend_test!(async fn a_deleted_message_leaves_no_text_when_filtered);
async fn a_deleted_message_leaves_no_text_when_filtered(backend: Backend) {
    let db = TestDatabase::new(backend);
    deleted_after(backend, Before::Filtered, &db)
        .await
        .stop()
        .await;
}

backend_test!(async fn a_deleted_message_leaves_no_text_when_over_quota);
async fn a_deleted_message_leaves_no_text_when_over_quota(backend: Backend) {
    let db = TestDatabase::new(backend);
    deleted_after(backend, Before::RateLimited, &db)
        .await
        .stop()
        .await;
}

backend_test!(async fn an_expired_message_replayed_after_its_deletion_is_not_stored_as_text);
async fn an_expired_message_replayed_after_its_deletion_is_not_stored_as_text(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = deleted_after(backend, Before::Expired, &db).await;
    // message_logger never saw it; now an operator replays the expired events: the listener
    // runs the erased envelope and keeps a deleted tombstone, not an empty text.
    let replayed = t
        .send(
            t.admin(reqwest::Method::POST, "/admin/dead-letters/replay")
                .header("content-type", "application/json")
                .body(r#"{"all": true, "status": "expired"}"#),
        )
        .await;
    assert_eq!(
        replayed.json["requeued"], 2,
        "{backend:?}: {:?}",
        replayed.json
    );
    t.settle(3).await;
    let m = t
        .query(|c| message_by_id(c, ID).expect("q"))
        .await
        .expect("stored as a tombstone");
    assert!(m.deleted, "{backend:?}: {m:?}");
    assert_eq!(
        (
            m.content.as_str(),
            &m.topic,
            &m.sender_email,
            &m.dm_recipients
        ),
        ("", &None, &None, &None),
        "{backend:?}"
    );
    assert!(
        t.query(|c| where_found(c, "KestrelExpiredOq7"))
            .await
            .is_empty()
    );
    t.stop().await;
}

backend_test!(async fn a_logger_scoped_by_channel_or_user_applies_deletions);
async fn a_logger_scoped_by_channel_or_user_applies_deletions(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(
            "[forwarder]\nlisteners = [\"log-denmark\", \"log-user\"]\n\
             [listeners.log-denmark]\nhandler = \"message_logger\"\nstreams = [\"Denmark\"]\n\
             [listeners.log-user]\nhandler = \"message_logger\"\nusers = [10]\nevents = [\"message\"]\n",
        )
        .start()
        .await;
    let answer = t
        .post_events(
            "msg_scoped_1",
            vec![envelope("m", secret_message("Scoped0x"))],
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let answer = t
        .post_events("msg_scoped_2", vec![envelope("d", deletion())])
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    t.settle(2).await;
    // Both listeners ran the deletion, which names no channel and no user (and `log-user`
    // does not list `delete_message` among its events).
    let runs: Vec<(String, bool)> = t
        .query(|c| {
            use zulip_listeners::db::schema::event_log as log;
            log::table
                .filter(log::event_type.eq("delete_message"))
                .order(log::listener)
                .select((log::listener, log::success))
                .load(c)
                .expect("event log")
        })
        .await;
    assert_eq!(
        runs,
        [
            ("log-denmark".to_string(), true),
            ("log-user".to_string(), true)
        ],
        "{backend:?}"
    );
    let m = t
        .query(|c| message_by_id(c, ID).expect("q"))
        .await
        .expect("tombstone");
    assert!(m.deleted && m.content.is_empty(), "{backend:?}: {m:?}");
    assert!(t.query(|c| where_found(c, "Scoped0x")).await.is_empty());
    t.stop().await;
}

backend_test!(async fn a_deletion_erases_the_outgoing_copies);
async fn a_deletion_erases_the_outgoing_copies(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .helper(&["message_logger", "command_bot"])
        .toml("[forwarder]\nlisteners = [\"message_logger\"]\n")
        .start()
        .await;
    // `echo` quotes the message in the reply recorded for Zulip's retries.
    let answer = t
        .post_json(
            "/zulip/outgoing",
            &mention(ID, "@**Helper** echo Outgoing9q"),
        )
        .await;
    assert_eq!(answer.json["content"], "Outgoing9q", "{:?}", answer.json);
    let recorded = eventually(Duration::from_secs(10), async || {
        t.query(|c| where_found(c, "Outgoing9q")).await.len() >= 2
    })
    .await;
    assert!(
        recorded,
        "{backend:?}: message and reply stored: {:?}",
        t.query(|c| where_found(c, "Outgoing9q")).await
    );
    let answer = t
        .post_events("msg_out_delete", vec![envelope("d", deletion())])
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    t.settle(1).await;
    let left = t.query(|c| where_found(c, "Outgoing9q")).await;
    assert!(left.is_empty(), "{backend:?}: {left:?}");
    t.stop().await;
}

backend_test!(async fn cleanup_days_zero_leaves_no_text_in_the_inbox);
async fn cleanup_days_zero_leaves_no_text_in_the_inbox(backend: Backend) {
    let db = TestDatabase::new(backend);
    let target = Stub::failing().await;
    // No message_logger: the envelopes are the only copies of the text.
    let app = TestApp::new(&db).forwarder().toml(&format!(
        "[forwarder]\nlisteners = [\"keyword_alerts\"]\nworkers = 1\nretry_delay = \"1h\"\nmax_retries = 5\n\
         [handlers.keyword_alerts]\nrules = [{{ name = \"retained\", pattern = \"alert me\", webhook = \"{}/alert\" }}]\n",
        target.url
    ));
    let config = app.config_file();
    let t = app.start().await;
    let old = (now_s() - 3 * 86_400) * 1000;
    let answer = t
        .post_events(
            "msg_retain",
            vec![
                envelope("pending", message(1, 10, "alert me: Retain5x pending")),
                Envelope::new("expired", message(2, 10, "Retain5x expired"))
                    .emitted_at_ms(old)
                    .json(),
                envelope("plain", message(3, 10, "nothing to alert")),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let tried = eventually(Duration::from_secs(20), async || {
        t.query(|c| inbox_status(c, "pending")).await.0 == InboxStatus::Pending
            && t.query(|c| log_errors(c, "keyword_alerts"))
                .await
                .iter()
                .flatten()
                .count()
                == 1
    })
    .await;
    assert!(tried, "{backend:?}");
    assert!(!t.query(|c| where_found(c, "Retain5x")).await.is_empty());
    t.stop().await;

    let out = cli(&config.path, &["cleanup", "--days", "0"]);
    assert!(
        out.contains("Erased the content of 1 inbox envelope"),
        "{out}"
    );
    let conn = &mut db.connect();
    let left = where_found(conn, "Retain5x");
    assert!(left.is_empty(), "{backend:?}: {left:?}\n{out}");
    // The pending event is kept, still to be processed, marked as erased by retention.
    let (status, payload) = inbox_status(conn, "pending");
    assert_eq!(status, InboxStatus::Pending);
    assert!(
        payload.starts_with(r#"{"content_removed":"retention","#),
        "{payload}"
    );
    target.stop().await;
}

backend_test!(async fn filtered_events_keep_no_envelope_and_are_still_deduplicated);
async fn filtered_events_keep_no_envelope_and_are_still_deduplicated(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .toml(
            "[forwarder]\nlisteners = [\"message_logger\"]\n\
             [filters]\nblocked_users = [13]\nallowed_realms = [2]\n",
        )
        .start()
        .await;
    let events = || {
        vec![
            envelope("blocked", message(41, 13, "Blocked3w says hi")),
            Envelope::new("elsewhere", message(42, 10, "Blocked3w elsewhere"))
                .realm(3, "elsewhere")
                .json(),
        ]
    };
    let first = t.post_events("msg_filtered_1", events()).await;
    assert_eq!(
        (
            first.json["filtered"].as_i64(),
            first.json["accepted"].as_i64()
        ),
        (Some(2), Some(0)),
        "{backend:?}: {:?}",
        first.json
    );
    for id in ["blocked", "elsewhere"] {
        let (status, payload) = t.query(move |c| inbox_status(c, id)).await;
        assert_eq!(
            (status, payload.as_str()),
            (InboxStatus::Filtered, ""),
            "{backend:?}: {id}"
        );
    }
    // Sent again in another batch: recognised, not counted twice.
    let again = t.post_events("msg_filtered_2", events()).await;
    assert_eq!(
        (
            again.json["duplicates"].as_i64(),
            again.json["filtered"].as_i64()
        ),
        (Some(2), Some(0)),
        "{backend:?}: {:?}",
        again.json
    );
    assert_eq!(t.query(|c| inbox_count(c, InboxStatus::Filtered)).await, 2);
    let left = t.query(|c| where_found(c, "Blocked3w")).await;
    assert!(left.is_empty(), "{backend:?}: {left:?}");
    t.stop().await;
}

backend_test!(fn the_lookup_by_message_id_uses_its_index);
fn the_lookup_by_message_id_uses_its_index(backend: Backend) {
    #[derive(QueryableByName)]
    struct Detail {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let db = TestDatabase::new(backend);
    let conn = &mut db.connect();
    // The WHERE clause `tables::inbox::erase_message_texts` sends.
    let query = "SELECT id, payload FROM inbox WHERE message_id IN (7301, 7302) AND realm_id = 2 \
                 AND payload <> '' AND payload NOT LIKE '{\"content\\_removed\":%' ESCAPE '\\'";
    let plan: Vec<String> = match conn {
        DbConnection::Sqlite(_) => diesel::sql_query(format!("EXPLAIN QUERY PLAN {query}"))
            .load::<Detail>(conn)
            .expect("plan")
            .into_iter()
            .map(|r| r.detail)
            .collect(),
        DbConnection::Postgres(_) => {
            // On an empty table any plan is cheap: ask for the one an index allows.
            diesel::sql_query("SET enable_seqscan = off")
                .execute(conn)
                .expect("set");
            diesel::sql_query(format!("EXPLAIN {query}"))
                .load::<Line>(conn)
                .expect("plan")
                .into_iter()
                .map(|l| l.line)
                .collect()
        }
    };
    let plan = plan.join("\n");
    assert!(plan.contains("inbox_message"), "{backend:?}: {plan}");
}
