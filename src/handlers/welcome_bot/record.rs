//! The record `welcome_bot` keeps: its own table `welcome_greetings` (one row per greeting sent,
//! or per bot never to greet), the effect that writes a row in the run's transaction, and the
//! query a run makes before sending.

use std::collections::HashSet;

use diesel::prelude::*;

use crate::clock::now_ms;
use crate::db::{DbConnection, DbError};
use crate::handlers::{Context, CustomEffect, Effect};

diesel::table! {
    /// One row per greeting sent (or, with `greeting = "bot"`, per bot never to greet).
    welcome_greetings (realm_id, user_id, greeting) {
        realm_id -> BigInt,
        user_id -> BigInt,
        greeting -> Text,
        sent_at_ms -> BigInt,
    }
}

/// A greeting recorded in `welcome_greetings`.
#[derive(Debug)]
pub(super) struct Greeted {
    realm_id: i64,
    user_id: i64,
    greeting: String,
    sent_at_ms: i64,
    /// A message was posted (kept even if the run fails, so that the retry skips it).
    delivered: bool,
}

impl Greeted {
    pub(super) fn effect(realm_id: i64, user_id: i64, greeting: &str, delivered: bool) -> Effect {
        Effect::Custom(Box::new(Greeted {
            realm_id,
            user_id,
            greeting: greeting.to_string(),
            sent_at_ms: now_ms(),
            delivered,
        }))
    }
}

impl CustomEffect for Greeted {
    fn apply(&self, conn: &mut DbConnection) -> Result<(), diesel::result::Error> {
        use welcome_greetings::dsl as g;
        let row = (
            g::realm_id.eq(self.realm_id),
            g::user_id.eq(self.user_id),
            g::greeting.eq(&self.greeting),
            g::sent_at_ms.eq(self.sent_at_ms),
        );
        match conn {
            DbConnection::Sqlite(c) => diesel::insert_or_ignore_into(g::welcome_greetings)
                .values(row)
                .execute(c)?,
            DbConnection::Postgres(c) => diesel::insert_into(g::welcome_greetings)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c)?,
        };
        Ok(())
    }

    fn records_delivery(&self) -> bool {
        self.delivered
    }
}

/// The greetings recorded for a user.
pub(super) async fn greeted(
    cx: &Context,
    realm_id: i64,
    user_id: i64,
) -> Result<HashSet<String>, DbError> {
    cx.db
        .run(move |c| {
            use welcome_greetings::dsl as g;
            Ok(g::welcome_greetings
                .filter(g::realm_id.eq(realm_id))
                .filter(g::user_id.eq(user_id))
                .select(g::greeting)
                .load::<String>(c)?
                .into_iter()
                .collect())
        })
        .await
}
