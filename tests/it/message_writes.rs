//! `MessageWrites` groups a transaction's message effects into few statements: on both
//! backends, the stored messages must come out exactly as when each effect is applied alone,
//! in order, whatever the order of stores, content edits, moves and deletions of the same
//! messages.

use diesel::Connection;
use zulip_listeners::db::tables::messages::{
    MessageEdit, MessageRow, MessageWrites, apply_edit, insert_messages, mark_deleted,
    message_by_id,
};
use zulip_listeners::db::{DbConnection, DbError};

use crate::support::{Backend, TestDatabase, backend_test};

/// Message ids the effects touch: few, so that effects on one message meet often.
const IDS: i64 = 6;

enum Step {
    Store(MessageRow),
    Edit(MessageEdit),
    Delete(Vec<i64>),
}

fn row(id: i64, version: u64) -> MessageRow {
    MessageRow {
        message_id: id,
        realm: "zulip".into(),
        realm_id: Some(2),
        message_type: "stream".into(),
        stream_id: Some(10),
        channel: Some("general".into()),
        topic: Some("lunch".into()),
        dm_recipients: None,
        sender_id: Some(7),
        sender_email: Some("iago@zulip.com".into()),
        sender_name: Some("Iago".into()),
        content: format!("first text of {id}, copy {version}"),
        content_truncated: false,
        sent_at: Some(1_700_000_000),
        source: "forwarder".into(),
        deleted: false,
        edited_at: None,
        stored_at_ms: 1_700_000_000_000,
    }
}

/// A deterministic sequence of effects (a linear congruential generator seeded by `seed`).
fn steps(seed: u64, count: usize) -> Vec<Step> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    (0..count as u64)
        .map(|n| {
            let id = 1 + next(IDS as u64) as i64;
            match next(10) {
                0..=3 => Step::Store(row(id, n)),
                4..=6 => Step::Edit(MessageEdit {
                    message_id: Some(id),
                    message_ids: vec![id],
                    content: Some((format!("edit {n} of {id}"), n % 3 == 0)),
                    topic: None,
                    stream_id: None,
                    edited_at: Some(1_700_000_100 + n as i64),
                }),
                7 => Step::Edit(MessageEdit {
                    message_id: Some(id),
                    message_ids: vec![id, 1 + (id % IDS)],
                    content: (n % 2 == 0).then(|| (format!("moved {n}"), false)),
                    topic: Some(format!("topic {n}")),
                    stream_id: (n % 3 == 0).then_some(11),
                    edited_at: Some(1_700_000_100 + n as i64),
                }),
                _ => Step::Delete(vec![id, 1 + next(IDS as u64) as i64]),
            }
        })
        .collect()
}

fn one_by_one(conn: &mut DbConnection, steps: &[Step]) -> Result<(), DbError> {
    for step in steps {
        match step {
            Step::Store(row) => insert_messages(conn, &[row])?,
            Step::Edit(edit) => apply_edit(conn, edit)?,
            Step::Delete(ids) => mark_deleted(conn, ids)?,
        }
    }
    Ok(())
}

fn grouped(conn: &mut DbConnection, steps: &[Step]) -> Result<(), DbError> {
    conn.transaction(|conn| {
        let mut writes = MessageWrites::default();
        for step in steps {
            match step {
                Step::Store(row) => writes.store(conn, row)?,
                Step::Edit(edit) => writes.edit(conn, edit)?,
                Step::Delete(ids) => writes.delete(ids),
            }
        }
        writes.flush(conn)
    })
}

fn stored(conn: &mut DbConnection) -> Vec<String> {
    (1..=IDS + 1)
        .map(|id| format!("{:?}", message_by_id(conn, id).expect("read message")))
        .collect()
}

backend_test!(fn grouped_message_effects_store_what_one_by_one_effects_store);
fn grouped_message_effects_store_what_one_by_one_effects_store(backend: Backend) {
    let expected_db = TestDatabase::new(backend);
    let grouped_db = TestDatabase::new(backend);
    let expected = &mut expected_db.connect();
    let actual = &mut grouped_db.connect();
    let mut deleted_and_edited = 0;
    for seed in 0..40 {
        let steps = steps(seed, 30);
        one_by_one(expected, &steps).expect("effects one by one");
        grouped(actual, &steps).expect("grouped effects");
        let want = stored(expected);
        assert_eq!(stored(actual), want, "seed {seed}");
        deleted_and_edited += want
            .iter()
            .filter(|row| row.contains("deleted: true") && row.contains("edited_at: Some"))
            .count();
        // The next seed starts from an empty table on both sides.
        for conn in [&mut *expected, &mut *actual] {
            diesel::RunQueryDsl::execute(diesel::sql_query("DELETE FROM messages"), conn)
                .expect("empty messages");
        }
    }
    // The sequences did meet the interesting orders (edits, then deletions, of one message).
    assert!(deleted_and_edited > 0);
}
