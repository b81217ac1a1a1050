//! The outgoing-webhook path: the configured bots, the record that answers Zulip's retries
//! without running handlers twice, the reply deadline, and late replies through the REST API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tracing::Instrument;

use super::{Processor, log_row};
use crate::clock::{millis, now_ms};
use crate::config::{Config, Secret};
use crate::db::tables::replies::ReplyRecord;
use crate::db::writer::{Processed, WriteOp, Writer};
use crate::db::{Db, DbError, tables};
use crate::events::{Event, Message, normalize_reply};
use crate::filters::Filters;
use crate::listeners::{ListenerId as HandlerId, Registry};
use crate::ratelimit::Limits;
use crate::telemetry::metric;
use crate::verification::token_matches;
use crate::zulip_api::{BotApi, Destination, ZulipClient};

/// The answer Zulip gets when there is nothing to post.
pub const NO_REPLY: &str = r#"{"response_not_required":true}"#;

/// Index of a bot in [`Bots`].
pub type BotId = usize;

/// One configured outgoing-webhook bot, ready for requests.
pub struct Bot {
    pub name: Arc<str>,
    email: String,
    token: Secret,
    pub full_name: Option<String>,
    pub api: Option<BotApi>,
    pub handlers: Arc<[HandlerId]>,
    pub deadline: Duration,
    /// The bot stands for its realm; `None` when rate limits are off.
    limits: Option<Limits>,
}

/// All bots, with the look-ups requests need.
pub struct Bots {
    list: Vec<Bot>,
    by_email: HashMap<String, BotId>,
    by_name: HashMap<String, BotId>,
}

impl Bots {
    pub fn build(config: &Config, registry: &Registry) -> Bots {
        let mut list = Vec::with_capacity(config.bots.len());
        for (name, bot) in &config.bots {
            let api = bot.site.as_ref().map(|site| BotApi {
                site: site.trim_end_matches('/').to_string(),
                email: bot.email.clone(),
                api_key: bot.api_key.clone(),
            });
            list.push(Bot {
                name: Arc::from(name.as_str()),
                email: bot.email.to_ascii_lowercase(),
                token: bot.token.clone(),
                full_name: bot.full_name.clone(),
                api,
                handlers: registry.ids(&bot.handler_names()).into(),
                deadline: bot
                    .reply_deadline
                    .unwrap_or_else(|| config.server.reply_deadline()),
                limits: config.rate_limits.enabled.then(|| {
                    let (per_realm, per_user) = config
                        .rate_limits
                        .quotas(&config.rate_limits.outgoing, bot.rate_limits.as_ref());
                    Limits::new(&per_realm, &per_user)
                }),
            });
        }
        let by_email = list
            .iter()
            .enumerate()
            .map(|(i, b)| (b.email.clone(), i))
            .collect();
        let by_name = list
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.to_string(), i))
            .collect();
        Bots {
            list,
            by_email,
            by_name,
        }
    }

    pub fn get(&self, id: BotId) -> &Bot {
        &self.list[id]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn by_name(&self, name: &str) -> Option<BotId> {
        self.by_name.get(name).copied()
    }

    pub fn by_email(&self, email: &str) -> Option<BotId> {
        if let Some(id) = self.by_email.get(email) {
            return Some(*id);
        }
        self.by_email.get(&email.to_ascii_lowercase()).copied()
    }

    /// The bot whose token this is (for bodies that name no bot). Every bot's token is
    /// compared, so the time taken does not reveal which one matched.
    pub fn by_token(&self, token: &str) -> Option<BotId> {
        let mut found = None;
        for (id, bot) in self.list.iter().enumerate() {
            if token_matches(&bot.token, token) && found.is_none() {
                found = Some(id);
            }
        }
        found
    }

    /// Whether `token` is this bot's.
    pub fn token_ok(&self, id: BotId, token: &str) -> bool {
        token_matches(&self.list[id].token, token)
    }

    /// Forgets idle rate-limit keys of every bot; returns the keys still tracked.
    pub fn limiter_housekeeping(&self) -> usize {
        self.list
            .iter()
            .filter_map(|b| b.limits.as_ref())
            .map(Limits::housekeeping)
            .sum()
    }
}

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
                body: serde_json::json!({ "content": text }).to_string().into(),
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
    filters: Arc<Filters>,
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
        filters: Arc<Filters>,
        dry_run: bool,
    ) -> Self {
        let notice = normalize_reply(&config.rate_limits.outgoing_notice);
        Self {
            bots,
            writer: processor.writer().clone(),
            processor,
            db,
            zulip,
            filters,
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

    /// Handles one verified request for `bot`.
    pub async fn handle(&self, bot_id: BotId, event: Event) -> Answer {
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
        if let Some(answer) = self.refuse(bot_id, &event).await {
            if let Some((_, message_id)) = key {
                self.remember(bot_id, message_id, &answer).await;
            }
            return answer;
        }
        metric::events_received("outgoing", "message", "accepted", 1);
        let bot = self.bots.get(bot_id);
        let event = Arc::new(event);
        let mut first_reply = self.processor.spawn(event.clone(), bot.handlers.clone());
        let reply = match tokio::time::timeout(bot.deadline, &mut first_reply).await {
            Ok(reply) => reply.unwrap_or(None),
            Err(_) => {
                tracing::warn!(
                    deadline_ms = bot.deadline.as_millis() as u64,
                    "handlers missed the reply deadline; answering without a reply"
                );
                self.spawn_late_delivery(bot_id, event.clone(), first_reply);
                None
            }
        };
        let reply = if self.dry_run {
            if let Some(text) = &reply {
                tracing::info!(reply = %crate::telemetry::scrub(text), "dry run: not replying");
            }
            None
        } else {
            reply
        };
        let answer = Answer::new(reply);
        if let Some((_, message_id)) = key {
            self.remember(bot_id, message_id, &answer).await;
        }
        answer
    }

    /// The filters and the bot's rate limits: `Some(answer)` when the event is not to be
    /// handled. A refusal is still a 200 (Zulip posts a public failure for anything else),
    /// and it is written to the event log with its reason.
    async fn refuse(&self, bot_id: BotId, event: &Event) -> Option<Answer> {
        let (guard, reason, reply) =
            if let Some(reason) = self.filters.reject(&event.realm, event.user_id) {
                ("filters", reason, None)
            } else {
                let decision = self
                    .bots
                    .get(bot_id)
                    .limits
                    .as_ref()?
                    .check(0, event.user_id);
                let reason = decision.reason()?;
                ("rate_limiter", reason, self.notice.clone())
            };
        tracing::info!(guard, %reason, user_id = ?event.user_id, "outgoing webhook not handled");
        metric::events_received(
            "outgoing",
            "message",
            if guard == "filters" {
                "filtered"
            } else {
                "rate_limited"
            },
            1,
        );
        let row = log_row(event, guard, 0, Some(reason));
        let processed = Processed {
            logs: vec![row],
            ..Processed::default()
        };
        self.writer
            .send(WriteOp::Processed(Box::new(processed)))
            .await;
        Some(Answer::new(reply))
    }

    async fn remember(&self, bot_id: BotId, message_id: i64, answer: &Answer) {
        let at_ms = now_ms();
        self.record.insert(
            (bot_id, message_id),
            Recorded {
                at_ms,
                body: Some(answer.body.clone()),
            },
        );
        if !self.dry_run {
            self.writer
                .send(WriteOp::Reply(ReplyRecord {
                    bot: self.bots.get(bot_id).name.to_string(),
                    message_id,
                    response: answer.body.to_string(),
                    created_at_ms: at_ms,
                }))
                .await;
        }
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
