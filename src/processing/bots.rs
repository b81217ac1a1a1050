//! The configured outgoing-webhook bots (`[bots.<name>]`): each one's listeners, reply
//! deadline, REST credentials and guards, the look-ups a request needs (by name, by email),
//! and token authentication that compares against every bot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Secret};
use crate::guards::Guards;
use crate::guards::filters::Filters;
use crate::listeners::{ListenerId, Registry};
use crate::verification::token_matches;
use crate::zulip_api::BotApi;

/// Index of a bot in [`Bots`].
pub type BotId = usize;

/// One configured outgoing-webhook bot, ready for requests.
pub struct Bot {
    pub name: Arc<str>,
    email: String,
    token: Secret,
    pub full_name: Option<String>,
    /// `[bots.<name>] realm_id`: the id of the bot's realm, which Zulip's payload does not
    /// carry.
    pub realm_id: Option<i64>,
    /// Whether it was logged that a listener scoped by realm id cannot run on its messages.
    pub realm_unknown_logged: std::sync::atomic::AtomicBool,
    pub api: Option<BotApi>,
    /// The listeners that run its messages, in order (the first reply wins).
    pub listeners: Arc<[ListenerId]>,
    pub deadline: Duration,
    /// The filters and the bot's quotas (the bot stands for its realm).
    pub guards: Guards,
}

/// All bots, with the look-ups requests need.
pub struct Bots {
    list: Vec<Bot>,
    by_email: HashMap<String, BotId>,
    by_name: HashMap<String, BotId>,
}

impl Bots {
    pub fn build(config: &Config, registry: &Registry, filters: &Arc<Filters>) -> Bots {
        let mut list = Vec::with_capacity(config.bots.len());
        for (name, bot) in &config.bots {
            list.push(Bot {
                name: Arc::from(name.as_str()),
                email: bot.email.to_ascii_lowercase(),
                token: bot.token.clone(),
                full_name: bot.full_name.clone(),
                realm_id: bot.realm_id,
                realm_unknown_logged: std::sync::atomic::AtomicBool::new(false),
                api: BotApi::from_config(bot),
                listeners: registry.ids(&bot.listener_names()).into(),
                deadline: bot
                    .reply_deadline
                    .unwrap_or_else(|| config.server.reply_deadline()),
                guards: Guards::outgoing(config, filters.clone(), bot.rate_limits.as_ref()),
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
        self.list.iter().map(|b| b.guards.housekeeping()).sum()
    }
}
