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

mod claims;
mod record;
mod template;

use std::time::Duration;

use serde::Deserialize;

use super::{
    BuildContext, Context, Effects, Handler, HandlerError, HandlerResult, Interest, SettingsError,
};
use crate::events::kinds::{RealmUser, Subscription};
use crate::events::{Event, EventKind};
use crate::zulip_api::{BotApi, Destination, ZulipClient};
use claims::Claims;
use record::{Greeted, greeted};
use template::{check_template, mention, render};

/// The greeting key of a new user's welcome.
const JOINED: &str = "realm";
/// The key that marks a user as a bot.
const BOT: &str = "bot";

const DEFAULT_NEW_USER_MESSAGE: &str = "Welcome, {mention}! :wave: We are glad to have you here.";
const DEFAULT_CHANNEL_MESSAGE: &str = "Welcome to {channel}, {mention}!";
const DEFAULT_NEW_USER_TOPIC: &str = "new members";

/// `[handlers.welcome_bot]`, as written. Every field has a default, so that a bad value can
/// be traced to its key (see [`Handler::Settings`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
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
    /// listeners`).
    api: Option<BotApi>,
    /// `None` when `new_user_message = ""`.
    new_user: Option<NewUserGreeting>,
    channels: Vec<ChannelGreeting>,
    zulip: ZulipClient,
    /// Greetings sent or being sent by this process.
    claimed: Claims,
}

impl WelcomeBot {
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
        let Some(mut claim) = self.claimed.claim(realm_id, user_id, key) else {
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
}

impl Handler for WelcomeBot {
    const NAME: &'static str = "welcome_bot";
    const INTEREST: Interest = Interest::Types(&["realm_user", "subscription"]);
    type Settings = Settings;

    fn build(raw: Settings, cx: &BuildContext<'_>) -> Result<Self, SettingsError> {
        let problem = |key: &str, problem: String| cx.problem::<Self>(key, problem);
        let api = match &raw.bot {
            None if cx.enabled
                && cx
                    .config
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
                let bot_config = cx
                    .config
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
            claimed: Claims::default(),
        })
    }

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

fn non_empty(text: String) -> Option<String> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}
