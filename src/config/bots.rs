//! `[outgoing]` (handling of Zulip's outgoing webhooks) and `[bots.<name>]` (one
//! outgoing-webhook bot each).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::listeners::ListenerList;
use super::{QuotaOverrides, Secret, checked};

/// Listeners a bot runs when its `listeners` key is omitted.
pub const DEFAULT_BOT_LISTENERS: &[&str] = &["command_bot"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingConfig {
    /// How long a (bot, message id) is remembered so that Zulip's retries are answered from the
    /// record instead of running the handlers again (Zulip retries for about 40 s).
    #[serde(deserialize_with = "checked::duration::<60_000, { u64::MAX }, _>")]
    pub dedup_window: Duration,
}

/// One outgoing-webhook bot.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The bot's Zulip email, as sent in `bot_email`.
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The bot's API key; with `site`, late replies are delivered through Zulip's REST API.
    #[serde(default)]
    pub api_key: Secret,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The Zulip server, e.g. `https://chat.example.com`.
    #[serde(default, deserialize_with = "checked::outbound_url")]
    pub site: Option<String>,
    /// The bot's display name, used to strip a leading mention when Zulip does not send it.
    #[serde(default)]
    pub full_name: Option<String>,
    /// The id of the bot's realm. Zulip's outgoing webhooks name the realm only by its
    /// subdomain; with this, listeners scoped by realm id run on the bot's messages too
    /// (without it the id is learned from forwarded events, when the forwarder is on).
    #[serde(default)]
    pub realm_id: Option<i64>,
    /// Listeners in the order they run (a handler name is the listener of that name); the
    /// first reply wins. See [`BotConfig::listener_names`].
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    /// `listeners` under its old name.
    #[serde(default, rename = "handlers")]
    pub(super) old_listeners: Option<Vec<String>>,
    /// Overrides `server.reply_deadline` for this bot.
    #[serde(default, with = "humantime_serde")]
    pub reply_deadline: Option<Duration>,
    /// This bot's own quotas (over `rate_limits.outgoing` and the defaults).
    #[serde(default)]
    pub rate_limits: Option<QuotaOverrides>,
}

impl BotConfig {
    /// The bot's listener names, in order.
    pub fn listener_names(&self) -> Vec<String> {
        self.list().names(DEFAULT_BOT_LISTENERS)
    }

    /// The key the bot's listeners were given under (`bots.<name>.listeners`, or the old
    /// `bots.<name>.handlers`), for messages about them.
    pub fn listeners_key(&self, name: &str) -> String {
        format!("bots.{name}.{}", self.list().key())
    }

    pub(super) fn list(&self) -> ListenerList<'_> {
        ListenerList::new(&self.listeners, &self.old_listeners)
    }
}

impl fmt::Debug for BotConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotConfig")
            .field("email", &self.email)
            .field("token", &self.token)
            .field("api_key", &self.api_key)
            .field("site", &self.site)
            .field("full_name", &self.full_name)
            .field("listeners", &self.listener_names())
            .field("rate_limits", &self.rate_limits)
            .finish_non_exhaustive()
    }
}
