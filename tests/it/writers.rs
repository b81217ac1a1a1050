//! Several database writers (PostgreSQL, `database.postgres_writers`): realms are written in
//! parallel, each by one writer in order, and a batch spanning several writers' realms is
//! stored part by part, each part exactly once, answered as one batch.

use std::num::NonZeroUsize;

use crate::support::*;
use serde_json::{Value, json};
use zulip_listeners::db::tables;

fn in_realm(event_id: &str, realm_id: i64, event: Value) -> Value {
    Envelope::new(event_id, event)
        .realm(realm_id, &format!("r{realm_id}"))
        .json()
}

fn edit(message_id: i64, content: &str) -> Value {
    json!({"type": "update_message", "user_id": 10, "edit_timestamp": 1700000100, "message_id": message_id, "message_ids": [message_id], "rendering_only": false, "content": content, "flags": []})
}

#[actix_web::test]
async fn realms_are_written_in_parallel_each_in_order_and_exactly_once() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let t = TestApp::new(&db)
        .forwarder()
        .start_edited(|c| c.database.postgres_writers = NonZeroUsize::new(3).expect("3"))
        .await;

    // Realms 3, 4 and 5 fall to three different writers: the batch is stored in three parts.
    let first = vec![
        in_realm("w1", 3, message(3001, 10, "realm three")),
        in_realm("w2", 4, message(4001, 10, "realm four")),
        in_realm("w3", 5, message(5001, 10, "realm five")),
        in_realm("w4", 3, edit(3001, "realm three, edited")),
        in_realm("w5", 5, message(5002, 11, "realm five again")),
    ];
    let answer = t.post_events("msg_parts_1", first.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(
        (&answer.json["accepted"], &answer.json["duplicates"]),
        (&json!(5), &json!(0))
    );

    // A later batch edits messages of the first, in two realms: applied after them.
    let later = vec![
        in_realm("w6", 5, edit(5001, "realm five, edited")),
        in_realm("w7", 4, edit(4001, "realm four, edited")),
    ];
    let answer = t.post_events("msg_parts_2", later).await;
    assert_eq!(answer.json["accepted"], 2, "{:?}", answer.json);

    // The same batch again: every part was stored, so the whole batch is a duplicate.
    let again = t.post_events("msg_parts_1", first).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        (&again.json["duplicate_batch"], &again.json["duplicates"]),
        (&json!(true), &json!(5)),
        "{:?}",
        again.json
    );

    // A batch whose first sending stored only realm 4's part (the other part's writer
    // failed): sent again whole, only the part not yet stored is stored.
    let answer = t
        .post_events(
            "msg_parts_3",
            vec![in_realm(
                "w8",
                4,
                message(4002, 12, "stored the first time"),
            )],
        )
        .await;
    assert_eq!(answer.json["accepted"], 1, "{:?}", answer.json);
    let answer = t
        .post_events(
            "msg_parts_3",
            vec![
                in_realm("w9", 3, message(3002, 12, "stored the second time")),
                in_realm("w8", 4, message(4002, 12, "stored the first time")),
            ],
        )
        .await;
    assert_eq!(
        (
            &answer.json["accepted"],
            &answer.json["duplicates"],
            &answer.json["duplicate_batch"]
        ),
        (&json!(1), &json!(1), &json!(false)),
        "{:?}",
        answer.json
    );

    let counts = t.settle(9).await;
    assert_eq!(count_of(&counts, InboxStatus::Done), 9, "{counts:?}");
    let contents = t
        .query(|c| {
            [3001, 4001, 5001, 5002, 3002, 4002].map(|id| {
                tables::messages::message_by_id(c, id)
                    .expect("read message")
                    .map(|m| m.content)
            })
        })
        .await;
    assert_eq!(
        contents,
        [
            "realm three, edited",
            "realm four, edited",
            "realm five, edited",
            "realm five again",
            "stored the second time",
            "stored the first time",
        ]
        .map(|s| Some(s.to_string()))
    );
    // Each message was logged once: no effect applied twice.
    let logged = t
        .query(|c| {
            use diesel::prelude::*;
            use zulip_listeners::db::schema::event_log;
            event_log::table
                .filter(event_log::listener.eq("message_logger"))
                .count()
                .get_result::<i64>(c)
                .expect("count event log")
        })
        .await;
    assert_eq!(logged, 9);
    t.stop().await;
}
