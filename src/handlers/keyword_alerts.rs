//! `keyword_alerts`: when a message matches a rule's regular expression, notify a channel
//! through Zulip's REST API (as one of the configured bots) or POST a JSON alert to a webhook.
//! Each (rule, message) alerts once; an alert that cannot be delivered fails the run, so a
//! forwarded event is retried (and ends in dead letters if the target stays down). The alerts
//! that were delivered are recorded even when another rule's failed, so a retry sends only
//! what failed.
//!
//! Everything taken from the message (excerpt, matched text, sender name, channel, topic) is
//! shortened and neutralised before it goes into an alert: no mention (`@**all**`, `@*group*`)
//! and no Markdown that could leave the quote block.
//!
//! A webhook alert carries the Standard Webhooks headers (`handlers::webhooks`):
//! `webhook-id` is the same for every attempt at one (event, listener, rule), and with
//! `secret` / `secret_file` (configuration file only) the alert is signed.
//!
//! ```toml
//! [handlers.keyword_alerts]
//! rules = [
//!   { name = "outage", pattern = "(?i)\\b(outage|is down)\\b", webhook = "https://hooks.example.com/alerts" },
//!   { name = "deploys", pattern = "(?i)deploy", notify_bot = "helper", stream = "ops", topic = "deploys" },
//! ]
//! timeout = "10s"
//! secret_file = "/etc/zulip-listeners/alerts.whsec"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::webhooks;
use super::{
    BuildContext, Context, Effect, Effects, Handler, HandlerError, HandlerResult, Interest,
    SettingsError, http_client,
};
use crate::clock::now_ms;
use crate::config::Secret;
use crate::db::tables;
use crate::db::tables::keyword_alerts::AlertRecord;
use crate::events::text::truncate_chars;
use crate::events::{Event, Message, MessageType};
use crate::verification::SigningKey;
use crate::zulip_api::{BotApi, Destination, ZulipClient};

/// Most characters of the matched text in an alert.
const MAX_MATCHED_CHARS: usize = 200;
/// Most characters of a name (sender, channel, topic) in an alert.
const MAX_NAME_CHARS: usize = 100;
/// Most characters of the message excerpt in an alert.
const MAX_EXCERPT_CHARS: usize = 500;

/// `[handlers.keyword_alerts]` (or a listener's `settings`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordSettings {
    #[serde(default)]
    rules: Vec<RuleSettings>,
    /// How long one webhook call may take (default 10 s).
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    /// Signs every webhook alert (Standard Webhooks); `whsec_…`.
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    name: String,
    pattern: String,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    notify_bot: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

enum Target {
    Webhook(reqwest::Url),
    Zulip {
        api: BotApi,
        destination: Destination,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Webhook(url) => format!("webhook {}", crate::redact::origin_of(url)),
            Target::Zulip { destination, .. } => match destination {
                Destination::Channel { to, topic } => format!("#{to} > {topic}"),
                Destination::Direct { to } => format!("direct message to {to}"),
            },
        }
    }
}

struct Rule {
    name: String,
    /// What its deliveries are recorded under: the rule's name, prefixed with the listener's
    /// name for a listener other than `keyword_alerts` itself (two listeners may both have a
    /// rule called "deploy", and each alerts once).
    key: String,
    pattern: Regex,
    target: Target,
}

pub struct KeywordAlerts {
    rules: Vec<Rule>,
    http: reqwest::Client,
    zulip: ZulipClient,
    /// The listener's name, part of each webhook alert's `webhook-id`.
    listener: String,
    /// Signs webhook alerts, when a secret is configured.
    signing: Option<SigningKey>,
}

impl KeywordAlerts {
    async fn send(
        &self,
        cx: &Context,
        rule: &Rule,
        event: &Event,
        message: &Message,
        matched: &str,
    ) -> Result<(), HandlerError> {
        let excerpt = truncate_chars(
            &message.content,
            cx.data_protection.max_content_length.min(MAX_EXCERPT_CHARS),
        )
        .0;
        let matched = truncate_chars(
            matched,
            cx.data_protection.max_content_length.min(MAX_MATCHED_CHARS),
        )
        .0;
        match &rule.target {
            Target::Webhook(url) => {
                let body = serde_json::json!({
                    "rule": rule.name,
                    "matched": matched,
                    "realm": event.realm.string_id,
                    "realm_id": event.realm.id,
                    "message": {
                        "id": message.id,
                        "type": message.message_type.as_str(),
                        "stream_id": message.stream_id,
                        "channel": message.channel,
                        "topic": message.topic,
                        "sender_id": message.sender_id,
                        "sender_full_name": message.sender_full_name,
                        "content": excerpt,
                        "timestamp": message.timestamp,
                    },
                });
                let body = serde_json::to_vec(&body).map_err(|e| {
                    HandlerError::Failed(format!("alert could not be encoded: {e}"))
                })?;
                let id = webhooks::webhook_id(event, &self.listener, &rule.name);
                let response = webhooks::webhook_post(
                    &self.http,
                    url,
                    "application/json",
                    body,
                    &id,
                    self.signing.as_ref(),
                )
                .send()
                .await
                .map_err(|e| {
                    HandlerError::Failed(format!(
                        "alert webhook unreachable: {}",
                        crate::redact::http_error(e)
                    ))
                })?;
                if !response.status().is_success() {
                    return Err(HandlerError::Failed(format!(
                        "alert webhook answered {}",
                        response.status()
                    )));
                }
            }
            Target::Zulip { api, destination } => {
                let content = alert_text(&rule.name, &matched, message, &excerpt);
                self.zulip
                    .send_message(api, destination, &content)
                    .await
                    .map_err(|e| HandlerError::Failed(format!("alert not posted: {e}")))?;
            }
        }
        Ok(())
    }
}

impl Handler for KeywordAlerts {
    const NAME: &'static str = "keyword_alerts";
    const INTEREST: Interest = Interest::Types(&["message"]);
    type Settings = KeywordSettings;

    fn build(typed: KeywordSettings, cx: &BuildContext<'_>) -> Result<Self, SettingsError> {
        let problem = |key: String, problem: String| cx.problem::<Self>(key, problem);
        let signing = webhooks::signing_secret(
            typed.secret.as_ref(),
            typed.secret_file.as_deref(),
            cx.files,
        )
        .map_err(|(key, p)| problem(key.into(), p))?;
        let raw = typed.rules;
        let mut rules = Vec::with_capacity(raw.len());
        for (i, rule) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            let pattern =
                Regex::new(&rule.pattern).map_err(|e| problem(key("pattern"), e.to_string()))?;
            let target = match (&rule.webhook, &rule.notify_bot) {
                (Some(url), None) => Target::Webhook(
                    crate::outbound::check_url(url).map_err(|p| problem(key("webhook"), p))?,
                ),
                (None, Some(bot)) => {
                    let bot_config = cx.config.bots.get(bot).ok_or_else(|| {
                        problem(key("notify_bot"), format!("no bot `{bot}` under [bots]"))
                    })?;
                    let api = BotApi::from_config(bot_config).ok_or_else(|| {
                        problem(
                            key("notify_bot"),
                            format!("bot `{bot}` needs api_key and site to post alerts"),
                        )
                    })?;
                    let stream = rule.stream.clone().ok_or_else(|| {
                        problem(
                            key("stream"),
                            "required with notify_bot: the channel to post in".into(),
                        )
                    })?;
                    Target::Zulip {
                        api,
                        destination: Destination::Channel {
                            to: stream,
                            topic: rule
                                .topic
                                .clone()
                                .unwrap_or_else(|| format!("{} alerts", rule.name)),
                        },
                    }
                }
                _ => {
                    return Err(problem(
                        format!("rules[{i}]"),
                        "give exactly one of `webhook` or `notify_bot`".into(),
                    ));
                }
            };
            let key = match cx.listener {
                Self::NAME => rule.name.clone(),
                listener => format!("{listener}/{}", rule.name),
            };
            rules.push(Rule {
                name: rule.name,
                key,
                pattern,
                target,
            });
        }
        let http = http_client(Self::NAME, typed.timeout, Duration::from_secs(10))?;
        let zulip = ZulipClient::new().map_err(|e| problem("rules".into(), e.to_string()))?;
        Ok(KeywordAlerts {
            rules,
            http,
            zulip,
            listener: cx.listener.to_string(),
            signing,
        })
    }

    async fn handle(&self, cx: &Context, event: &Event, effects: &mut Effects) -> HandlerResult {
        // A message whose stored content was removed (deleted meanwhile) has nothing to match.
        let Some(message) = event.message().filter(|m| m.content_removed.is_none()) else {
            return Ok(None);
        };
        let matches: Vec<(&Rule, String)> = self
            .rules
            .iter()
            .filter_map(|rule| {
                rule.pattern
                    .find(&message.content)
                    .map(|m| (rule, m.as_str().to_string()))
            })
            .collect();
        if matches.is_empty() {
            return Ok(None);
        }
        let already = match message.id {
            Some(id) => {
                cx.db
                    .run(move |c| tables::keyword_alerts::alerted_rules(c, id))
                    .await?
            }
            None => Default::default(),
        };
        // Every rule gets its try; the ones delivered are recorded even if another fails.
        let mut failure = None;
        for (rule, matched) in matches {
            if already.contains(&rule.key) {
                continue;
            }
            if cx.dry_run {
                tracing::info!(rule = %rule.name, "dry run: not sending the alert");
                continue;
            }
            if let Err(e) = self.send(cx, rule, event, message, &matched).await {
                failure.get_or_insert(e);
                continue;
            }
            if let Some(id) = message.id {
                effects.push(Effect::AlertSent(AlertRecord {
                    rule: rule.key.clone(),
                    message_id: id,
                    realm: event.realm.string_id.clone().unwrap_or_default(),
                    target: rule.target.describe(),
                    sent_at_ms: now_ms(),
                }));
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// The text of an alert posted to Zulip. Only the rule's name (from the configuration) is
/// used as it is; everything from the message is neutralised.
fn alert_text(rule: &str, matched: &str, message: &Message, excerpt: &str) -> String {
    let place = match (message.message_type, &message.channel, &message.topic) {
        (MessageType::Stream, Some(channel), Some(topic)) => {
            let linkable = |s: &str| {
                s.chars().count() <= MAX_NAME_CHARS
                    && !s.contains(['*', '>', '`', '@', '\n', '\r', '[', ']'])
            };
            if linkable(channel) && linkable(topic) {
                format!("#**{channel}>{topic}**")
            } else {
                format!("{} > {}", inline(channel), inline(topic))
            }
        }
        (MessageType::Stream, _, _) => "a channel".to_string(),
        (MessageType::Private, _, _) => "a direct message".to_string(),
    };
    let who = message
        .sender_full_name
        .as_deref()
        .map_or_else(|| "Someone".to_string(), inline);
    let code = no_mentions(&one_line(matched)).replace('`', "'");
    let body = no_mentions(excerpt);
    let fence = "`".repeat(longest_run(&body, '`').max(2) + 1);
    format!("**{rule}** matched `{code}` — {who} in {place}:\n{fence}quote\n{body}\n{fence}")
}

/// A name shortened to one line, with Markdown and mentions neutralised.
pub(super) fn inline(text: &str) -> String {
    let short = truncate_chars(&one_line(text), MAX_NAME_CHARS).0;
    let mut out = String::with_capacity(short.len() + 8);
    for c in no_mentions(&short).chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '<' | '>' | '#' | '~' | '|' | '$'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Puts a zero-width space after every `@`, so that no mention syntax (`@**all**`,
/// `@*group*`, `@_**name**`) can match.
fn no_mentions(text: &str) -> String {
    text.replace('@', "@\u{200B}")
}

/// The longest run of `c` in `text`.
fn longest_run(text: &str, c: char) -> usize {
    let (mut longest, mut run) = (0, 0);
    for ch in text.chars() {
        run = if ch == c { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(content: &str, name: &str, topic: &str) -> Message {
        Message {
            id: Some(1),
            message_type: MessageType::Stream,
            content: content.into(),
            command: content.into(),
            sender_id: Some(10),
            sender_email: None,
            sender_full_name: Some(name.into()),
            stream_id: Some(5),
            channel: Some("general".into()),
            topic: Some(topic.into()),
            recipients: Vec::new(),
            timestamp: None,
            content_removed: None,
        }
    }

    #[test]
    fn alert_text_cannot_mention_or_leave_the_quote() {
        let content = "deploy\n```\n@**all** fake outage, click [here](https://evil.example)\n````";
        let m = message(content, "Eve @**all**", "t**opic");
        let text = alert_text("deploys", "deploy\n```\n@**all**", &m, content);
        for needle in ["@**", "@*", "@_*"] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
        // The fence is longer than any backtick run inside it, so nothing closes it early.
        let fence = "`".repeat(5);
        assert!(text.contains(&format!("{fence}quote\n")), "{text}");
        assert!(text.ends_with(&format!("\n{fence}")), "{text}");
        // A topic with `**` is not made into a channel link it could break out of.
        assert!(!text.contains("#**general>"), "{text}");
        assert!(text.contains("t\\*\\*opic"), "{text}");
        // The matched text is one line of inline code.
        assert!(
            text.starts_with("**deploys** matched `deploy ''' @\u{200B}**all**`"),
            "{text}"
        );
    }

    #[test]
    fn plain_names_keep_their_channel_link() {
        let m = message("outage", "Ann", "deploys");
        let text = alert_text("outage", "outage", &m, "outage");
        assert!(text.contains("Ann in #**general>deploys**"), "{text}");
        assert!(text.contains("```quote\noutage\n```"), "{text}");
    }
}
