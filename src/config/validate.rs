//! The rules checked once the layers are read and the secret files resolved: those that relate
//! several keys, those about map keys (bot and listener names), and those about secrets that
//! may come from a `*_file`. A rule about one value alone is checked while it is read (see
//! [`super::checked`] and the section types).

use std::collections::BTreeMap;
use std::time::Duration;

use super::listeners::OLD_LIST_KEY;
use super::server::MIN_SQLITE_CACHE_PER_CONNECTION;
use super::{BotConfig, Config, ConfigError, RealmSelector, invalid};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let zulip_timeout = self.server.zulip_outgoing_webhook_timeout;
        check_deadline(
            "server.reply_deadline",
            self.server.reply_deadline(),
            zulip_timeout,
        )?;
        let largest_body = self
            .server
            .max_body_bytes
            .max(self.forwarder.max_body_bytes);
        if self.server.unverified_body_bytes < largest_body {
            return Err(invalid(
                "server.unverified_body_bytes",
                format!(
                    "must be at least the largest body allowed ({largest_body} bytes, \
                     server.max_body_bytes / forwarder.max_body_bytes), or such a body could never be read"
                ),
            ));
        }
        if let Some(share) = self.server.unverified_body_bytes_per_peer
            && !(largest_body..=self.server.unverified_body_bytes).contains(&share)
        {
            return Err(invalid(
                "server.unverified_body_bytes_per_peer",
                format!(
                    "must be at least the largest body allowed ({largest_body} bytes) and at most \
                     server.unverified_body_bytes ({} bytes)",
                    self.server.unverified_body_bytes
                ),
            ));
        }
        let plan = self.server.memory(self.database.pool_size);
        if plan.sqlite_cache_per_connection < MIN_SQLITE_CACHE_PER_CONNECTION {
            return Err(invalid(
                "server.memory_budget",
                format!(
                    "leaves {} KiB of page cache per pooled database connection (an eighth of \
                     the budget over database.pool_size + 1 connections; the writer's connection \
                     has another eighth); at least 128 KiB is needed: raise the budget or lower \
                     database.pool_size",
                    plan.sqlite_cache_per_connection / 1024
                ),
            ));
        }
        let database = &self.database;
        if database.min_free_space > 0 && database.max_wal_size > database.min_free_space {
            return Err(invalid(
                "database.max_wal_size",
                format!(
                    "({} bytes) must not be more than database.min_free_space ({} bytes): \
                     emptying a full log needs up to its size in free space, which the floor \
                     keeps",
                    database.max_wal_size, database.min_free_space
                ),
            ));
        }
        let mut emails = BTreeMap::new();
        for (name, bot) in &self.bots {
            self.validate_bot(name, bot)?;
            if let Some(other) = emails.insert(bot.email.to_ascii_lowercase(), name) {
                return Err(invalid(
                    format!("bots.{name}.email"),
                    format!("`{}` is also the email of bot `{other}`", bot.email),
                ));
            }
        }
        self.check_realm_scopes()?;
        if self.forwarder.list().given_twice() {
            return Err(given_twice("forwarder"));
        }
        self.admin.validate()?;
        let e = &self.error_handling;
        if let Some(bot) = &e.notification_bot {
            if self.bots.get(bot).is_none_or(|b| b.site.is_none()) {
                return Err(invalid(
                    "error_handling.notification_bot",
                    format!("`{bot}` must be a bot under [bots] with api_key and site"),
                ));
            }
            if e.notification_stream.is_none() {
                return Err(invalid(
                    "error_handling.notification_stream",
                    "required with notification_bot",
                ));
            }
        }
        let alert_days = self.retention.alert_retention_days;
        if alert_days > 0
            && Duration::from_secs(u64::from(alert_days) * 86_400) <= self.filters.max_event_age
        {
            return Err(invalid(
                "retention.alert_retention_days",
                format!(
                    "{alert_days} day(s) must be longer than filters.max_event_age, or a re-sent \
                     event could alert a second time"
                ),
            ));
        }
        for name in self.listeners.keys() {
            check_name(
                &format!("listeners.{name}"),
                name,
                64,
                "listener names are 1 to 64 letters, digits, `-` and `_` (they appear in URLs)",
            )?;
        }
        // Whether listener names and handler settings exist and suit their handlers is
        // checked by the listener registry, which owns the handler names.
        Ok(())
    }

    /// A bot's listener scoped by realm id could never run on the bot's messages when
    /// nothing tells the server the realm's id: Zulip's outgoing webhook names the realm only
    /// by its subdomain, and without the forwarder no event teaches the id.
    fn check_realm_scopes(&self) -> Result<(), ConfigError> {
        if !self.forwarder.secrets.is_empty() {
            return Ok(());
        }
        for (bot_name, bot) in self.bots.iter().filter(|(_, b)| b.realm_id.is_none()) {
            for listener in bot.listener_names() {
                let Some(definition) = self.listeners.get(&listener) else {
                    continue;
                };
                if let Some(RealmSelector::Id(id)) = definition
                    .scope
                    .realms
                    .iter()
                    .find(|r| matches!(r, RealmSelector::Id(_)))
                {
                    return Err(invalid(
                        format!("listeners.{listener}.realms"),
                        format!(
                            "names realm {id} by id, but bot `{bot_name}`'s outgoing webhooks \
                             name the realm only by its subdomain (and the forwarder, which \
                             would tell the id, is off): set bots.{bot_name}.realm_id = {id}, \
                             or name the realm by its subdomain"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_bot(&self, name: &str, bot: &BotConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("bots.{name}.{k}");
        check_name(
            &format!("bots.{name}"),
            name,
            usize::MAX,
            "bot names may use only letters, digits, `-` and `_` (they appear in URLs)",
        )?;
        if bot.email.trim().is_empty() || !bot.email.contains('@') {
            return Err(invalid(
                key("email"),
                "required: the bot's email as shown in Zulip's bot settings",
            ));
        }
        if bot.token.expose().trim().is_empty() {
            return Err(invalid(
                key("token"),
                "required: the outgoing webhook token from Zulip (or `token_file`)",
            ));
        }
        match (&bot.site, bot.api_key.is_empty()) {
            (Some(_), true) => {
                return Err(invalid(
                    key("api_key"),
                    "`site` is set but `api_key` is not; give both to enable late replies",
                ));
            }
            (None, false) => {
                return Err(invalid(
                    key("site"),
                    "`api_key` is set but `site` is not; give both to enable late replies",
                ));
            }
            _ => {}
        }
        if let Some(deadline) = bot.reply_deadline {
            check_deadline(
                &key("reply_deadline"),
                deadline,
                self.server.zulip_outgoing_webhook_timeout,
            )?;
        }
        if bot.list().given_twice() {
            return Err(given_twice(&format!("bots.{name}")));
        }
        if bot.listener_names().is_empty() {
            return Err(invalid(
                bot.listeners_key(name),
                "must name at least one listener",
            ));
        }
        Ok(())
    }
}

/// A reply deadline must end before Zulip stops waiting (`server.zulip_outgoing_webhook_timeout`):
/// otherwise Zulip retries while the first run still holds the request, and that run's reply
/// is lost.
fn check_deadline(
    key: &str,
    deadline: Duration,
    zulip_timeout: Duration,
) -> Result<(), ConfigError> {
    if deadline < Duration::from_millis(100) || deadline >= zulip_timeout {
        return Err(invalid(
            key,
            format!(
                "must be at least 100ms and below server.zulip_outgoing_webhook_timeout ({}): \
                 Zulip gives up after that and retries",
                humantime::format_duration(zulip_timeout)
            ),
        ));
    }
    Ok(())
}

/// Bot and listener names appear in URLs, metrics and the CLI.
fn check_name(key: &str, name: &str, max_len: usize, problem: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > max_len
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(key, problem));
    }
    Ok(())
}

/// A list of listeners given both as `listeners` and under its old name in `section`.
fn given_twice(section: &str) -> ConfigError {
    invalid(
        format!("{section}.{OLD_LIST_KEY}"),
        "is the old name of `listeners`, which is given too; keep only `listeners`",
    )
}
