//! `welcome_bot`: greets people, posting through Zulip's REST API as a configured bot.
//!
//! * A user joins the organization (forwarded `realm_user` / `add`): a direct message to them
//!   with `new_user_message`, or a post in `channel` > `topic` when `channel` is set.
//! * A user is subscribed to one of the configured `channels` (forwarded `subscription` /
//!   `add`, which Zulip sends once per subscriber, to that subscriber): that channel's
//!   `message`, as a direct message to the user, or in the channel under `topic` when the
//!   entry has one.
//!
//! Bots are never greeted: a `realm_user` / `add` with `is_bot` is remembered, so that the
//! bot's later subscriptions are skipped too. The placeholder `add` Zulip sends to guests who
//! cannot see the new user (`inaccessible_user`) is skipped: another `add` carries the user.
//!
//! Each greeting is sent once per (realm, user, greeting): it is recorded in the handler's own
//! table `welcome_greetings` in the same transaction as the run's result, a run reads what is
//! recorded before sending, and greetings sent in this process whose record is not committed
//! yet are remembered in memory. A retried event (the post failed) or a repeated one (Zulip's
//! up to three `realm_user` / `add` events for one new user) therefore greets once.
//!
//! Templates may use `{mention}` (a mention of the user: `@**Full Name|id**`, or `@**|id**`
//! when the name could break the syntax or is not known), `{name}` (the user's name, shortened
//! and with Markdown and mentions neutralised; new users only, since `subscription` events do
//! not carry it) and `{channel}` (the configured channel, as a link; channel greetings only).
//! No email address is ever put in a message.
//!
//! ```toml
//! [handlers.welcome_bot]
//! bot = "greeter"                  # a [bots.<name>] with api_key and site
//! new_user_message = "Welcome, {mention}! Say hello in #**general**."
//! # channel = "general"           # post new-user greetings there instead of a direct message
//! # topic = "new members"
//! channels = [
//!   { channel = "engineering", message = "Welcome to {channel}, {mention}! Read the pinned topic first." },
//!   { channel = "help", message = "{mention} just joined {channel}.", topic = "new faces" },
//! ]
//! timeout = "10s"
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde::Deserialize;

use super::keyword_alerts::inline;
use super::{
    Context, CustomEffect, Effect, Effects, Handler, HandlerError, HandlerResult, Interest,
    SettingsError, typed_settings,
};
use crate::clock::now_ms;
use crate::config::{Config, HandlerSettings};
use crate::db::{DbConnection, DbError};
use crate::events::kinds::{Person, RealmUser, Subscription};
use crate::events::{Event, EventKind};
use crate::zulip_api::{BotApi, Destination, ZulipClient};

diesel::table! {
    /// One row per greeting sent (or, with `greeting = "bot"`, per bot never to greet).
    welcome_greetings (realm_id, user_id, greeting) {
        realm_id -> BigInt,
        user_id -> BigInt,
        greeting -> Text,
        sent_at_ms -> BigInt,
    }
}

/// The greeting key of a new user's welcome.
const JOINED: &str = "realm";
/// The key that marks a user as a bot.
const BOT: &str = "bot";
/// Longest a name may be to go into a mention as it is.
const MAX_MENTION_NAME_CHARS: usize = 100;
/// Longest template accepted.
const MAX_TEMPLATE_CHARS: usize = 8_000;
/// How long a greeting sent by this process is remembered in memory (its record is committed
/// long before).
const REMEMBER_SENT: Duration = Duration::from_secs(600);
/// Most greetings remembered in memory; older ones are forgotten first.
const MAX_REMEMBERED: usize = 10_000;

const DEFAULT_NEW_USER_MESSAGE: &str = "Welcome, {mention}! :wave: We are glad to have you here.";
const DEFAULT_CHANNEL_MESSAGE: &str = "Welcome to {channel}, {mention}!";
const DEFAULT_NEW_USER_TOPIC: &str = "new members";

/// `[handlers.welcome_bot]`, as written. Every field has a default, so that a bad value can
/// be traced to its key (see [`typed_settings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    bot: Option<String>,
    #[serde(default)]
    new_user_message: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    channels: Vec<ChannelSettings>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelSettings {
    channel: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

/// Where a greeting goes.
#[derive(Debug, Clone)]
enum Place {
    /// A direct message to the user greeted.
    Direct,
    /// A post in a channel.
    Channel { name: String, topic: String },
}

#[derive(Debug)]
struct NewUserGreeting {
    template: String,
    place: Place,
}

#[derive(Debug)]
struct ChannelGreeting {
    /// As configured.
    name: String,
    /// `channel:<name in lower case>`: Zulip channel names are unique regardless of case.
    key: String,
    template: String,
    place: Place,
}

pub struct WelcomeBot {
    /// `None` when no bot is configured (the handler is then off or not in `[forwarder]
    /// handlers`).
    api: Option<BotApi>,
    /// `None` when `new_user_message = ""`.
    new_user: Option<NewUserGreeting>,
    channels: Vec<ChannelGreeting>,
    zulip: ZulipClient,
    /// Greetings sent or being sent by this process: (realm, user, key) → when claimed.
    claimed: Mutex<HashMap<(i64, i64, String), Instant>>,
}

impl WelcomeBot {
    pub fn from_settings(
        settings: &HandlerSettings,
        config: &Config,
    ) -> Result<Self, SettingsError> {
        let raw: Settings = typed_settings(Self::NAME, settings)?;
        let problem = |key: &str, problem: String| SettingsError {
            handler: Self::NAME,
            key: key.to_string(),
            problem,
        };
        let api = match &raw.bot {
            None if settings.enabled
                && config
                    .forwarder
                    .listener_names()
                    .iter()
                    .any(|h| h == Self::NAME) =>
            {
                return Err(problem(
                    "bot",
                    "required when [forwarder] listeners lists welcome_bot: the [bots.<name>] \
                     (with api_key and site) that posts the greetings"
                        .into(),
                ));
            }
            None => None,
            Some(bot) => {
                let bot_config = config
                    .bots
                    .get(bot)
                    .ok_or_else(|| problem("bot", format!("no bot `{bot}` under [bots]")))?;
                let api = BotApi::from_config(bot_config)
                    .filter(|_| !bot_config.api_key.is_empty())
                    .ok_or_else(|| {
                        problem(
                            "bot",
                            format!("bot `{bot}` needs api_key and site to post greetings"),
                        )
                    })?;
                Some(api)
            }
        };
        let place = match (raw.channel, raw.topic) {
            (Some(name), topic) => Place::Channel {
                name: non_empty(name).ok_or_else(|| problem("channel", "is empty".into()))?,
                topic: topic.unwrap_or_else(|| DEFAULT_NEW_USER_TOPIC.into()),
            },
            (None, Some(_)) => {
                return Err(problem(
                    "topic",
                    "needs `channel`: new users are greeted by direct message otherwise".into(),
                ));
            }
            (None, None) => Place::Direct,
        };
        let template = raw
            .new_user_message
            .unwrap_or_else(|| DEFAULT_NEW_USER_MESSAGE.into());
        check_template(&template, &["mention", "name"])
            .map_err(|p| problem("new_user_message", p))?;
        let new_user = (!template.trim().is_empty()).then_some(NewUserGreeting { template, place });
        let mut channels: Vec<ChannelGreeting> = Vec::with_capacity(raw.channels.len());
        for (i, entry) in raw.channels.into_iter().enumerate() {
            let key = |k: &str| format!("channels[{i}].{k}");
            let name = non_empty(entry.channel)
                .ok_or_else(|| problem(&key("channel"), "is empty".into()))?;
            let greeting_key = format!("channel:{}", name.to_lowercase());
            if channels.iter().any(|c| c.key == greeting_key) {
                return Err(problem(
                    &key("channel"),
                    format!("`{name}` is listed twice"),
                ));
            }
            let template = entry
                .message
                .unwrap_or_else(|| DEFAULT_CHANNEL_MESSAGE.into());
            if template.trim().is_empty() {
                return Err(problem(&key("message"), "is empty".into()));
            }
            check_template(&template, &["mention", "channel"])
                .map_err(|p| problem(&key("message"), p))?;
            let place = match entry.topic {
                Some(topic) => Place::Channel {
                    name: name.clone(),
                    topic,
                },
                None => Place::Direct,
            };
            channels.push(ChannelGreeting {
                name,
                key: greeting_key,
                template,
                place,
            });
        }
        let http = crate::outbound::client(raw.timeout.unwrap_or(Duration::from_secs(10)))
            .map_err(|e| problem("timeout", crate::redact::http_error(e)))?;
        Ok(WelcomeBot {
            api,
            new_user,
            channels,
            zulip: ZulipClient::with_client(http),
            claimed: Mutex::new(HashMap::new()),
        })
    }

    /// A new member of the organization.
    async fn on_new_user(
        &self,
        cx: &Context,
        realm_id: i64,
        event: &RealmUser,
        effects: &mut Effects,
    ) -> HandlerResult {
        let (Some(api), Some(person)) = (&self.api, &event.person) else {
            return Ok(None);
        };
        let Some(user_id) = person.user_id else {
            return Ok(None);
        };
        if event.inaccessible_user == Some(true) || person.is_active == Some(false) {
            return Ok(None);
        }
        if person.is_bot == Some(true) || person.email.as_deref() == Some(api.email.as_str()) {
            if !cx.dry_run {
                effects.push(Greeted::effect(realm_id, user_id, BOT, false));
            }
            return Ok(None);
        }
        let Some(greeting) = &self.new_user else {
            return Ok(None);
        };
        if greeted(cx, realm_id, user_id).await?.contains(JOINED) {
            return Ok(None);
        }
        let content = render(
            &greeting.template,
            &mention(user_id, Some(person)),
            person.full_name.as_deref(),
            None,
        );
        self.deliver(
            cx,
            api,
            realm_id,
            user_id,
            JOINED,
            &greeting.place,
            &content,
            effects,
        )
        .await?;
        Ok(None)
    }

    /// A user subscribed to channels: greets them in the configured ones.
    async fn on_subscribed(
        &self,
        cx: &Context,
        realm_id: i64,
        user_id: i64,
        event: &Subscription,
        effects: &mut Effects,
    ) -> HandlerResult {
        let Some(api) = &self.api else {
            return Ok(None);
        };
        let added: Vec<String> = event
            .channels()
            .into_iter()
            .filter_map(|c| c.name.map(|n| n.to_lowercase()))
            .collect();
        let wanted: Vec<&ChannelGreeting> = self
            .channels
            .iter()
            .filter(|c| {
                added
                    .iter()
                    .any(|a| c.key.strip_prefix("channel:") == Some(a))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(None);
        }
        let already = greeted(cx, realm_id, user_id).await?;
        if already.contains(BOT) {
            return Ok(None);
        }
        // Every channel gets its try; the greetings delivered are recorded even if another fails.
        let mut failure = None;
        for channel in wanted {
            if already.contains(&channel.key) {
                continue;
            }
            let content = render(
                &channel.template,
                &mention(user_id, None),
                None,
                Some(&channel.name),
            );
            if let Err(e) = self
                .deliver(
                    cx,
                    api,
                    realm_id,
                    user_id,
                    &channel.key,
                    &channel.place,
                    &content,
                    effects,
                )
                .await
            {
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Posts one greeting unless this process already sent it or is sending it, and records it.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        cx: &Context,
        api: &BotApi,
        realm_id: i64,
        user_id: i64,
        key: &str,
        place: &Place,
        content: &str,
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        if cx.dry_run {
            tracing::info!(greeting = key, user_id, "dry run: not sending the greeting");
            return Ok(());
        }
        let Some(mut claim) = self.claim(realm_id, user_id, key) else {
            tracing::debug!(
                greeting = key,
                user_id,
                "greeting already sent by this process"
            );
            return Ok(());
        };
        let destination = match place {
            Place::Direct => Destination::Direct {
                to: format!("[{user_id}]"),
            },
            Place::Channel { name, topic } => Destination::Channel {
                to: name.clone(),
                topic: topic.clone(),
            },
        };
        self.zulip
            .send_message(api, &destination, content)
            .await
            .map_err(|e| HandlerError::Failed(format!("greeting not posted: {e}")))?;
        claim.sent = true;
        effects.push(Greeted::effect(realm_id, user_id, key, true));
        Ok(())
    }

    /// Claims a greeting for this run; `None` when it was sent or is being sent by another
    /// run in this process (its record may not be committed yet).
    fn claim(&self, realm_id: i64, user_id: i64, key: &str) -> Option<Claim<'_>> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if claimed.len() >= MAX_REMEMBERED {
            claimed.retain(|_, at| now.duration_since(*at) < REMEMBER_SENT);
        }
        if claimed.len() >= MAX_REMEMBERED {
            // Still full of recent greetings: forget the oldest half.
            let mut ages: Vec<Instant> = claimed.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            claimed.retain(|_, at| *at > cut);
        }
        let slot = (realm_id, user_id, key.to_string());
        if claimed
            .get(&slot)
            .is_some_and(|at| now.duration_since(*at) < REMEMBER_SENT)
        {
            return None;
        }
        claimed.insert(slot.clone(), now);
        Some(Claim {
            owner: self,
            slot,
            sent: false,
        })
    }
}

/// A greeting being sent; released on drop unless it was sent (failed, or the run was cut
/// short by its timeout), so that the retry sends it.
struct Claim<'a> {
    owner: &'a WelcomeBot,
    slot: (i64, i64, String),
    sent: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.owner
                .claimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.slot);
        }
    }
}

impl Handler for WelcomeBot {
    const NAME: &'static str = "welcome_bot";
    const INTEREST: Interest = Interest::Types(&["realm_user", "subscription"]);

    async fn handle(&self, cx: &Context, event: &Event, effects: &mut Effects) -> HandlerResult {
        // Only forwarded events carry the realm id the records are kept under.
        let Some(realm_id) = event.realm.id else {
            return Ok(None);
        };
        match &event.kind {
            EventKind::RealmUser(u) if u.op.as_deref() == Some("add") => {
                self.on_new_user(cx, realm_id, u, effects).await
            }
            // Sent to the subscriber alone: the event's user is the one subscribed.
            EventKind::Subscription(s) if s.op.as_deref() == Some("add") => match event.user_id {
                Some(user_id) => self.on_subscribed(cx, realm_id, user_id, s, effects).await,
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

/// A greeting recorded in `welcome_greetings`.
#[derive(Debug)]
struct Greeted {
    realm_id: i64,
    user_id: i64,
    greeting: String,
    sent_at_ms: i64,
    /// A message was posted (kept even if the run fails, so that the retry skips it).
    delivered: bool,
}

impl Greeted {
    fn effect(realm_id: i64, user_id: i64, greeting: &str, delivered: bool) -> Effect {
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
async fn greeted(cx: &Context, realm_id: i64, user_id: i64) -> Result<HashSet<String>, DbError> {
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

fn non_empty(text: String) -> Option<String> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Checks that a template uses only `allowed` placeholders and leaves room, once filled in,
/// within Zulip's 10,000-character limit.
fn check_template(template: &str, allowed: &[&str]) -> Result<(), String> {
    if template.chars().count() > MAX_TEMPLATE_CHARS {
        return Err(format!(
            "is longer than {MAX_TEMPLATE_CHARS} characters (Zulip accepts messages of up to \
             10,000)"
        ));
    }
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            break;
        };
        let word = &after[..end];
        let is_placeholder =
            !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_placeholder && !allowed.contains(&word) {
            let known: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
            let why = if word == "name" {
                " (subscription events do not carry the user's name; use {mention})"
            } else {
                ""
            };
            return Err(format!(
                "unknown placeholder `{{{word}}}`{why}; known: {}",
                known.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// A mention of the user: `@**Full Name|id**` when the name is plain, else `@**|id**`,
/// which Zulip shows with the user's current name.
fn mention(user_id: i64, person: Option<&Person>) -> String {
    let name = person
        .and_then(|p| p.full_name.as_deref())
        .map(str::trim)
        .filter(|n| {
            !n.is_empty()
                && n.chars().count() <= MAX_MENTION_NAME_CHARS
                && !n.contains(['*', '|', '@', '`', '\\', '[', ']'])
                && !n.chars().any(char::is_control)
        })
        .unwrap_or_default();
    format!("@**{name}|{user_id}**")
}

/// Fills a template in. Only the configured text and channel name are used as they are; the
/// user's name is neutralised.
fn render(template: &str, mention: &str, name: Option<&str>, channel: Option<&str>) -> String {
    let name = name.map_or_else(|| "there".to_string(), inline);
    let channel = channel.map_or_else(String::new, |c| {
        if c.chars().count() <= MAX_MENTION_NAME_CHARS
            && !c.contains(['*', '>', '`', '@', '\n', '\r', '[', ']'])
        {
            format!("#**{c}**")
        } else {
            inline(c)
        }
    });
    // One pass, so that a name containing "{mention}" is not filled in again.
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let (value, len) = if after.starts_with("{mention}") {
            (mention, "{mention}".len())
        } else if after.starts_with("{name}") {
            (name.as_str(), "{name}".len())
        } else if after.starts_with("{channel}") {
            (channel.as_str(), "{channel}".len())
        } else {
            ("{", 1)
        };
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> Person {
        Person {
            user_id: Some(14),
            full_name: Some(name.into()),
            email: None,
            is_active: Some(true),
            is_bot: Some(false),
            role: Some(400),
        }
    }

    #[test]
    fn mentions_use_the_name_only_when_it_cannot_break_the_syntax() {
        assert_eq!(mention(14, Some(&person("Ann Lee"))), "@**Ann Lee|14**");
        assert_eq!(mention(14, Some(&person("Eve** @**all"))), "@**|14**");
        assert_eq!(mention(14, Some(&person("a|1"))), "@**|14**");
        assert_eq!(mention(14, None), "@**|14**");
    }

    #[test]
    fn names_cannot_mention_or_break_out() {
        let text = render(
            "Hi {name}, {mention} {unknown}",
            "@**|14**",
            Some("Eve @**all** [x](https://evil.example)\n# big"),
            None,
        );
        assert!(!text.contains("@**all"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("\\[x\\]"), "{text}");
        assert!(text.ends_with("@**|14** {unknown}"), "{text}");
        // A name that looks like a placeholder stays text.
        let text = render("{name}!", "M", Some("{mention}"), None);
        assert_eq!(text, "{mention}!");
        assert_eq!(
            render("Welcome to {channel}", "M", None, Some("help")),
            "Welcome to #**help**"
        );
        assert_eq!(
            render("To {channel}", "M", None, Some("a**b")),
            "To a\\*\\*b"
        );
    }

    #[test]
    fn templates_name_unknown_placeholders() {
        assert!(check_template("Hi {mention} {name}", &["mention", "name"]).is_ok());
        assert!(check_template("JSON {\"a\": 1} and {}", &["mention"]).is_ok());
        let err = check_template("{name} joined {channel}", &["mention", "channel"])
            .expect_err("name is unknown for channels");
        assert!(
            err.contains("{name}") && err.contains("use {mention}"),
            "{err}"
        );
        assert!(check_template(&"x".repeat(8_001), &["mention"]).is_err());
        let err = check_template("{email}", &["mention", "name"]).expect_err("no emails");
        assert!(err.contains("`{email}`"), "{err}");
    }
}
