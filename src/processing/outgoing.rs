//! The outgoing-webhook path: the guards, the record that answers Zulip's retries without
//! running listeners twice, the reply deadline, and late replies through the REST API. The
//! bots themselves are in [`super::bots`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tracing::Instrument;

use super::bots::{BotId, Bots};
use super::{Processor, Started, log_row};
use crate::clock::{millis, now_ms};
use crate::config::{Config, RealmSelector};
use crate::db::tables::replies::ReplyRecord;
use crate::db::writer::{Processed, WriteOp, Writer};
use crate::db::{Db, DbError, tables};
use crate::events::text::normalize_reply;
use crate::events::{Event, Message, Origin};
use crate::guards::{Guard, Refused, Subject};
use crate::telemetry::metric;
use crate::zulip_api::{BotApi, Destination, ZulipClient};

/// The answer Zulip gets when there is nothing to post.
pub const NO_REPLY: &str = r#"{"response_not_required":true}"#;

/// What became of a request: the JSON answer, and whether it came from the retry record.
pub struct Answer {
    /// The generic-interface body (`{"content": …}` or [`NO_REPLY`]).
    pub body: Arc<str>,
    pub reply: Option<Arc<str>>,
    pub from_record: bool,
}

impl Answer {
    fn new(reply: Option<String>) -> Answer {
        match reply {
            Some(text) => Answer {
                body: content_body(&text).into(),
                reply: Some(text.into()),
                from_record: false,
            },
            None => Answer {
                body: NO_REPLY.into(),
                reply: None,
                from_record: false,
            },
        }
    }

    fn recorded(body: Arc<str>) -> Answer {
        Answer {
            body,
            reply: None,
            from_record: true,
        }
    }
}

/// `{"content": text}`, written directly (a `serde_json::Value` on the way costs a map and a
/// copy of the text on every request).
fn content_body(text: &str) -> String {
    #[derive(serde::Serialize)]
    struct Content<'a> {
        content: &'a str,
    }
    // Serialising a string cannot fail; the fallback only keeps this free of a panic path.
    serde_json::to_string(&Content { content: text }).unwrap_or_else(|_| NO_REPLY.to_string())
}

/// A remembered answer; `None` while the first delivery is still being handled.
struct Recorded {
    at_ms: i64,
    body: Option<Arc<str>>,
}

/// The outgoing-webhook service.
pub struct OutgoingService {
    pub bots: Bots,
    processor: Processor,
    writer: Writer,
    db: Db,
    zulip: ZulipClient,
    record: DashMap<(BotId, i64), Recorded>,
    window: Duration,
    /// The reply for a user over quota (`None`: no reply).
    notice: Option<String>,
    dry_run: bool,
}

impl OutgoingService {
    pub fn new(
        config: &Config,
        bots: Bots,
        processor: Processor,
        db: Db,
        zulip: ZulipClient,
        dry_run: bool,
    ) -> Self {
        let notice = normalize_reply(&config.rate_limits.outgoing_notice);
        Self {
            bots,
            writer: processor.writer().clone(),
            processor,
            db,
            zulip,
            record: DashMap::new(),
            window: config.outgoing.dedup_window,
            notice,
            dry_run,
        }
    }

    /// The database (for the routes that share this service's pool).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Reloads the answers given within the window (so retries after a restart are still
    /// recognised). Returns how many were loaded.
    pub async fn load_record(&self) -> Result<usize, DbError> {
        let since = now_ms() - millis(self.window);
        let rows = self
            .db
            .run(move |c| tables::replies::replies_since(c, since))
            .await?;
        let mut loaded = 0;
        for row in rows {
            if let Some(bot) = self.bots.by_name(&row.bot) {
                self.record.insert(
                    (bot, row.message_id),
                    Recorded {
                        at_ms: row.created_at_ms,
                        body: Some(row.response.into()),
                    },
                );
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Forgets answers older than the window, in memory and in the database.
    pub async fn prune_record(&self) -> Result<usize, DbError> {
        let cutoff = now_ms() - millis(self.window);
        self.record.retain(|_, r| r.at_ms >= cutoff);
        self.db
            .run(move |c| tables::replies::delete_replies_before(c, cutoff))
            .await
    }

    /// Zulip's payload names the realm only by its subdomain: the id comes from the bot's
    /// `realm_id`, else from what forwarded events taught ([`super::realms`]). When neither
    /// knows it and one of the bot's listeners is scoped by realm id (it cannot run on this
    /// message), that is logged once per bot.
    fn resolve_realm(&self, bot_id: BotId, event: &mut Event) {
        if event.realm.id.is_some() {
            return;
        }
        let bot = self.bots.get(bot_id);
        event.realm.id = bot.realm_id.or_else(|| {
            let subdomain = event.realm.string_id.as_deref()?;
            self.processor.realms().id_of(subdomain)
        });
        if event.realm.id.is_some() || bot.realm_unknown_logged.load(Ordering::Relaxed) {
            return;
        }
        let registry = self.processor.registry();
        let scoped_by_id = bot.listeners.iter().find_map(|&id| {
            let entry = registry.get(id)?;
            let live = entry.live();
            let by_id = live
                .definition
                .scope
                .realms
                .iter()
                .any(|r| matches!(r, RealmSelector::Id(_)));
            by_id.then(|| entry.name())
        });
        if let Some(listener) = scoped_by_id
            && !bot.realm_unknown_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                listener,
                realm = event.realm.string_id.as_deref().unwrap_or(""),
                "listener is scoped by realm id, but this bot's webhook names its realm only by subdomain and no forwarded event has told its id: set [bots.<name>] realm_id (the listener does not run on these messages until then)"
            );
        }
    }

    /// Handles one verified request for `bot`.
    pub async fn handle(&self, bot_id: BotId, mut event: Event) -> Answer {
        self.resolve_realm(bot_id, &mut event);
        let key = event.message_id().map(|id| (bot_id, id));
        if let Some(key) = key {
            match self.record.entry(key) {
                Entry::Occupied(seen) => {
                    metric::events_received("outgoing", "message", "duplicate", 1);
                    tracing::info!(
                        message_id = key.1,
                        "retry of a message already handled; answering from the record"
                    );
                    let body = seen.get().body.clone().unwrap_or_else(|| NO_REPLY.into());
                    return Answer::recorded(body);
                }
                Entry::Vacant(slot) => {
                    slot.insert(Recorded {
                        at_ms: now_ms(),
                        body: None,
                    });
                }
            }
        }
        // A trigger this server does not know (e.g. `all_received`): the listeners run, but the
        // bot was not addressed, so Zulip gets no reply, not even a rate-limit notice.
        let addressed = match &event.origin {
            Origin::Outgoing { trigger, .. } => trigger.is_addressed(),
            Origin::Forwarder { .. } => true,
        };
        if !addressed {
            tracing::info!(
                "outgoing webhook with a trigger this server does not know: listeners run, no reply"
            );
        }
        if let Some((answer, refused)) = self.refuse(bot_id, &event, addressed) {
            self.write(bot_id, key, &answer, Some(refused));
            return answer;
        }
        metric::events_received("outgoing", "message", "accepted", 1);
        let bot = self.bots.get(bot_id);
        let event = Arc::new(event);
        let (reply, processed) = match self.processor.start(event.clone(), bot.listeners.clone()) {
            Started::Finished { reply, processed } => (reply, Some(processed)),
            Started::Running(mut first_reply) => {
                match tokio::time::timeout(bot.deadline, &mut first_reply).await {
                    Ok(reply) => (reply.unwrap_or(None), None),
                    Err(_) if addressed => {
                        tracing::warn!(
                            deadline_ms = bot.deadline.as_millis() as u64,
                            "handlers missed the reply deadline; answering without a reply"
                        );
                        self.spawn_late_delivery(bot_id, event.clone(), first_reply);
                        (None, None)
                    }
                    // Not addressed: nothing to deliver late; the run goes on as a task.
                    Err(_) => (None, None),
                }
            }
        };
        let reply = if !addressed {
            None
        } else if self.dry_run {
            if let Some(text) = &reply {
                tracing::info!(reply = %crate::telemetry::scrub(text), "dry run: not replying");
            }
            None
        } else {
            reply
        };
        let answer = Answer::new(reply);
        self.write(bot_id, key, &answer, processed);
        answer
    }

    /// The bot's guards (filters, then its rate limits): the answer and the event-log row of
    /// the refusal when the event is not to be handled. A refusal is still a 200 (Zulip posts
    /// a public failure for anything else).
    fn refuse(
        &self,
        bot_id: BotId,
        event: &Event,
        addressed: bool,
    ) -> Option<(Answer, Box<Processed>)> {
        let subject = Subject {
            realm: &event.realm,
            // The bot stands for its realm.
            realm_key: 0,
            user_id: event.user_id,
            emitted_at_ms: None,
        };
        let Refused { guard, reason } = self
            .bots
            .get(bot_id)
            .guards
            .check(subject, now_ms())
            .err()?;
        let reply = match guard {
            Guard::RateLimit if addressed => self.notice.clone(),
            Guard::RateLimit | Guard::MaxAge | Guard::Filters => None,
        };
        tracing::info!(guard = guard.name(), %reason, user_id = ?event.user_id, "outgoing webhook not handled");
        metric::events_received("outgoing", "message", guard.outcome(), 1);
        let processed = Processed {
            logs: vec![log_row(event, guard.name(), 0, Some(reason))],
            ..Processed::default()
        };
        Some((Answer::new(reply), Box::new(processed)))
    }

    /// Remembers the answer to a message (in memory and, with the run's results, in the
    /// database) and sends whatever is to be written in one piece to the writer. `processed`
    /// is `None` when the run went on as a task that writes its own results. If the writer's
    /// queue is full, the sending goes on as a tracked task, so that it is not lost when Zulip
    /// hangs up and the request is dropped.
    fn write(
        &self,
        bot_id: BotId,
        key: Option<(BotId, i64)>,
        answer: &Answer,
        processed: Option<Box<Processed>>,
    ) {
        let reply = key.and_then(|(_, message_id)| self.remember(bot_id, message_id, answer));
        let processed = match (processed, reply) {
            (Some(mut processed), reply) => {
                processed.reply = reply;
                processed
            }
            (None, Some(reply)) => Box::new(Processed {
                reply: Some(reply),
                ..Processed::default()
            }),
            (None, None) => return,
        };
        let writer = self.writer.clone();
        let send = async move { writer.send(WriteOp::Processed(processed)).await };
        self.processor.tasks().run_or_spawn(send, |()| async {});
    }

    /// Keeps the answer for Zulip's retries; returns the record to store (none in a dry run).
    fn remember(&self, bot_id: BotId, message_id: i64, answer: &Answer) -> Option<ReplyRecord> {
        let at_ms = now_ms();
        self.record.insert(
            (bot_id, message_id),
            Recorded {
                at_ms,
                body: Some(answer.body.clone()),
            },
        );
        (!self.dry_run).then(|| ReplyRecord {
            bot: self.bots.get(bot_id).name.to_string(),
            message_id,
            response: answer.body.to_string(),
            created_at_ms: at_ms,
        })
    }

    fn spawn_late_delivery(
        &self,
        bot_id: BotId,
        event: Arc<Event>,
        first_reply: tokio::sync::oneshot::Receiver<Option<String>>,
    ) {
        let bot = self.bots.get(bot_id);
        let api = bot.api.clone();
        let name = bot.name.clone();
        let zulip = self.zulip.clone();
        let dry_run = self.dry_run;
        let span = tracing::info_span!("late_reply", bot = %name, message_id = ?event.message_id());
        self.processor.tasks().spawn(
            async move {
                let Ok(Some(reply)) = first_reply.await else {
                    tracing::info!("handlers finished late without a reply");
                    return;
                };
                let Some(message) = event.message() else {
                    return;
                };
                deliver_late(&zulip, api.as_ref(), message, &reply, dry_run).await;
            }
            .instrument(span),
        );
    }
}

async fn deliver_late(
    zulip: &ZulipClient,
    api: Option<&BotApi>,
    message: &Message,
    reply: &str,
    dry_run: bool,
) {
    let Some(api) = api else {
        tracing::warn!("late reply dropped: the bot has no api_key and site to post it with");
        metric::late_reply("dropped");
        return;
    };
    let Some(destination) = Destination::reply_to(message) else {
        tracing::warn!("late reply dropped: the message names no channel or recipients");
        metric::late_reply("dropped");
        return;
    };
    if dry_run {
        tracing::info!("dry run: not posting the late reply");
        return;
    }
    match zulip.send_message(api, &destination, reply).await {
        Ok(id) => {
            metric::late_reply("sent");
            tracing::info!(reply_message_id = ?id, "late reply posted through the REST API");
        }
        Err(error) => {
            metric::late_reply("failed");
            tracing::error!(%error, "late reply could not be posted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_body_is_zulips_content_object() {
        for text in [
            "pong",
            "a \"quoted\"\nline\\ with ünïcode 🎉 and \u{1} control",
        ] {
            let body = content_body(text);
            let parsed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(parsed, serde_json::json!({ "content": text }), "{body}");
        }
    }
}
