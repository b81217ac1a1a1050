//! Zulip's outgoing-webhook wire formats — the generic JSON body and the Slack-compatible form —
//! read through one [`Body`], and how each becomes an [`Event`]: the message typed, a leading
//! mention of the bot stripped into the command text. `WireMessage` is also the `message` of a
//! forwarded `message` event.
//!
//! Parsing is tolerant the way Zulip's payloads require: unknown fields are ignored, every
//! `message` field is optional, and the minimal bodies found in Zulip's own docs and tests work.

use std::sync::Arc;

use serde::Deserialize;

use super::{
    Event, EventKind, Message, MessageType, Origin, PayloadError, RawBody, Realm, Recipient,
    Trigger,
};

/// The generic (Zulip-format) outgoing-webhook body.
#[derive(Debug, Deserialize)]
pub struct OutgoingPayload {
    #[serde(default)]
    pub bot_email: Option<String>,
    #[serde(default)]
    pub bot_full_name: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub trigger: Option<String>,
    #[serde(default)]
    pub message: Option<WireMessage>,
}

/// `message` as Zulip sends it (the `GET /messages` format), every field optional.
#[derive(Debug, Default, Deserialize)]
pub struct WireMessage {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default, rename = "type")]
    pub message_type: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub display_recipient: Option<DisplayRecipient>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub sender_id: Option<i64>,
    #[serde(default)]
    pub sender_email: Option<String>,
    #[serde(default)]
    pub sender_full_name: Option<String>,
    #[serde(default)]
    pub sender_realm_str: Option<String>,
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// A channel name, or the participants of a direct message.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DisplayRecipient {
    Channel(String),
    People(Vec<Recipient>),
}

impl OutgoingPayload {
    /// Parses a generic-interface body.
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(PayloadError(
                "the request body is empty; expected Zulip's outgoing-webhook JSON".into(),
            ));
        }
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(PayloadError(
                "the body must be a JSON object (Zulip's outgoing-webhook format)".into(),
            ));
        }
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                PayloadError(format!("unexpected field type in the body: {e}"))
            }
            _ => PayloadError(format!("the body is not valid JSON: {e}")),
        })
    }

    /// The trigger: the `trigger` field, or (for minimal bodies without one) the one the
    /// message type implies.
    pub fn trigger(&self) -> Trigger {
        match self.trigger.as_deref() {
            Some(value) => Trigger::parse(value),
            None => match self
                .message
                .as_ref()
                .and_then(|m| m.message_type.as_deref())
            {
                Some("private") => Trigger::DirectMessage,
                _ => Trigger::Mention,
            },
        }
    }

    /// The realm and message, a leading mention of the bot stripped into the command (the bot
    /// named by `bot_full_name`, else `configured_name`; when neither is known, any mention).
    fn into_message(self, trigger: &Trigger, configured_name: Option<&str>) -> (Realm, Message) {
        let mut wire = self.message.unwrap_or_default();
        if wire.content.is_none() {
            wire.content = self.data;
        }
        let bot_name = self.bot_full_name.as_deref().or(configured_name);
        let realm_str = wire.sender_realm_str.take();
        let default_type = match trigger {
            Trigger::DirectMessage => MessageType::Private,
            Trigger::Mention | Trigger::Other(_) => MessageType::Stream,
        };
        let message = wire.into_message(default_type, |content| {
            strip_leading_mention(content, bot_name).to_string()
        });
        let realm = Realm {
            id: None,
            string_id: realm_str,
        };
        (realm, message)
    }
}

impl WireMessage {
    /// The typed message; `command` derives the command text from the content.
    pub fn into_message(
        self,
        default_type: MessageType,
        command: impl FnOnce(&str) -> String,
    ) -> Message {
        let content = self.content.unwrap_or_default();
        let command = command(&content);
        let message_type = match self.message_type.as_deref() {
            Some("private") => MessageType::Private,
            Some(_) => MessageType::Stream,
            None => default_type,
        };
        let (channel, recipients) = match self.display_recipient {
            Some(DisplayRecipient::Channel(name)) => (Some(name), Vec::new()),
            Some(DisplayRecipient::People(people)) => (None, people),
            None => (None, Vec::new()),
        };
        Message {
            id: self.id,
            message_type,
            content,
            command,
            sender_id: self.sender_id,
            sender_email: self.sender_email,
            sender_full_name: self.sender_full_name,
            stream_id: self.stream_id,
            channel,
            topic: self.subject,
            recipients,
            timestamp: self.timestamp,
            content_removed: None,
        }
    }
}

/// The Slack-compatible body (`application/x-www-form-urlencoded`). Zulip sends it for
/// channel mentions only; ids carry Slack-style prefixes (`T`, `C`, `U`).
#[derive(Debug, Deserialize)]
pub struct SlackPayload {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub team_domain: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub channel_name: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub trigger_word: Option<String>,
}

impl SlackPayload {
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| PayloadError(format!("the form body cannot be read: {e}")))
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger_word
            .as_deref()
            .map_or(Trigger::Mention, Trigger::parse)
    }

    /// The realm and message, a leading mention of the bot (`configured_name`, else any)
    /// stripped into the command.
    fn into_message(self, configured_name: Option<&str>) -> (Realm, Message) {
        let content = self.text.unwrap_or_default();
        let command = strip_leading_mention(&content, configured_name).to_string();
        let sender_id = prefixed_id(self.user_id.as_deref(), 'U');
        let realm = Realm {
            id: prefixed_id(self.team_id.as_deref(), 'T'),
            string_id: None,
        };
        let message = Message {
            id: None,
            message_type: MessageType::Stream,
            content,
            command,
            sender_id,
            sender_email: None,
            sender_full_name: self.user_name,
            stream_id: prefixed_id(self.channel_id.as_deref(), 'C'),
            channel: self.channel_name,
            topic: None,
            recipients: Vec::new(),
            timestamp: self.timestamp.and_then(|t| t.parse().ok()),
            content_removed: None,
        };
        (realm, message)
    }
}

/// An outgoing-webhook body in either of Zulip's formats: its own JSON, or the Slack-compatible
/// form (which names no bot: the bot is found by the path or the token).
#[derive(Debug)]
pub enum Body {
    Zulip(OutgoingPayload),
    Slack(SlackPayload),
}

impl Body {
    pub fn parse(slack: bool, body: &[u8]) -> Result<Body, PayloadError> {
        Ok(if slack {
            Body::Slack(SlackPayload::parse(body)?)
        } else {
            Body::Zulip(OutgoingPayload::parse(body)?)
        })
    }

    pub fn token(&self) -> &str {
        let token = match self {
            Body::Zulip(p) => p.token.as_deref(),
            Body::Slack(p) => p.token.as_deref(),
        };
        token.unwrap_or_default()
    }

    pub fn bot_email(&self) -> Option<&str> {
        match self {
            Body::Zulip(p) => p.bot_email.as_deref(),
            Body::Slack(_) => None,
        }
    }

    pub fn trigger(&self) -> Trigger {
        match self {
            Body::Zulip(p) => p.trigger(),
            Body::Slack(p) => p.trigger(),
        }
    }

    /// Turns the body into an event for `bot`, stripping a leading mention of the bot (named
    /// by the body's `bot_full_name`, else `configured_name`; when neither is known, any
    /// leading mention). The event is about the sender; when Zulip emitted it is not known.
    pub fn into_event(
        self,
        bot: Arc<str>,
        trigger: Trigger,
        configured_name: Option<&str>,
        raw: bytes::Bytes,
    ) -> Event {
        let form = matches!(self, Body::Slack(_));
        let (realm, message) = match self {
            Body::Zulip(p) => p.into_message(&trigger, configured_name),
            Body::Slack(p) => p.into_message(configured_name),
        };
        Event {
            origin: Origin::Outgoing {
                bot,
                trigger,
                raw: RawBody { bytes: raw, form },
            },
            realm,
            user_id: message.sender_id,
            occurred_at_ms: None,
            kind: EventKind::Message(Box::new(message)),
        }
    }
}

fn prefixed_id(value: Option<&str>, prefix: char) -> Option<i64> {
    let value = value?;
    value.strip_prefix(prefix).unwrap_or(value).parse().ok()
}

/// Removes a leading `@**Name**` or `@**Name|id**` (and the whitespace after it). With a
/// name, only a mention of that name is removed; without one, any leading mention is.
pub fn strip_leading_mention<'a>(content: &'a str, bot_name: Option<&str>) -> &'a str {
    let trimmed = content.trim_start();
    let Some(rest) = trimmed.strip_prefix("@**") else {
        return trimmed.trim_end();
    };
    let Some(end) = rest.find("**") else {
        return trimmed.trim_end();
    };
    let mentioned = &rest[..end];
    let mentioned_name = mentioned.split('|').next().unwrap_or(mentioned);
    let matches = match bot_name {
        Some(name) => mentioned_name == name,
        None => true,
    };
    if matches {
        rest[end + 2..].trim()
    } else {
        trimmed.trim_end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_id_mentions() {
        assert_eq!(
            strip_leading_mention("@**Helper** ping", Some("Helper")),
            "ping"
        );
        assert_eq!(
            strip_leading_mention("@**Helper|42**   echo hi ", Some("Helper")),
            "echo hi"
        );
        assert_eq!(
            strip_leading_mention("@**Other** ping", Some("Helper")),
            "@**Other** ping"
        );
        assert_eq!(strip_leading_mention("@**Anyone** ping", None), "ping");
        assert_eq!(
            strip_leading_mention("ping @**Helper**", Some("Helper")),
            "ping @**Helper**"
        );
        assert_eq!(
            strip_leading_mention("@**unterminated ping", None),
            "@**unterminated ping"
        );
    }

    #[test]
    fn ascii_escapes_and_surrogate_pairs_decode() {
        let body = br#"{"token":"t","message":{"content":"h\u00e9llo \ud83d\ude00","subject":""}}"#;
        let payload = Body::Zulip(OutgoingPayload::parse(body).expect("parses"));
        let event = payload.into_event("b".into(), Trigger::Mention, None, bytes::Bytes::new());
        let message = event.message().expect("message");
        assert_eq!(message.content, "héllo 😀");
        assert_eq!(message.topic.as_deref(), Some(""));
    }

    #[test]
    fn trigger_is_inferred_for_minimal_bodies() {
        let p =
            OutgoingPayload::parse(br#"{"data":"x","message":{"type":"private"}}"#).expect("ok");
        assert_eq!(p.trigger(), Trigger::DirectMessage);
        let p = OutgoingPayload::parse(br#"{"trigger":"private_message"}"#).expect("ok");
        assert_eq!(p.trigger(), Trigger::DirectMessage);
        let p = OutgoingPayload::parse(br#"{"trigger":"all_received"}"#).expect("ok");
        assert_eq!(p.trigger(), Trigger::Other("all_received".into()));
        assert!(!p.trigger().is_addressed());
        let p = OutgoingPayload::parse(br#"{"trigger":"<b>x y</b>"}"#).expect("ok");
        assert_eq!(
            p.trigger().as_str(),
            "bxyb",
            "only safe characters are kept"
        );
    }

    #[test]
    fn malformed_bodies_are_explained() {
        assert!(OutgoingPayload::parse(b"").unwrap_err().0.contains("empty"));
        assert!(
            OutgoingPayload::parse(b"[1]")
                .unwrap_err()
                .0
                .contains("object")
        );
        assert!(OutgoingPayload::parse(b"{").unwrap_err().0.contains("JSON"));
        let e = OutgoingPayload::parse(br#"{"message":{"id":"x"}}"#).unwrap_err();
        assert!(e.0.contains("invalid type"), "{}", e.0);
    }

    #[test]
    fn slack_form_maps_prefixed_ids() {
        let body = b"token=v9fp&team_id=T1512&team_domain=zulip.example.com&channel_id=C123&channel_name=integrations&thread_ts=1532078950&timestamp=1532078950&user_id=U21&user_name=Full+Name&text=%40%2A%2Atest%2A%2A+ping&trigger_word=mention&service_id=27";
        let payload = Body::Slack(SlackPayload::parse(body).expect("parses"));
        assert_eq!(payload.trigger(), Trigger::Mention);
        let event = payload.into_event("b".into(), Trigger::Mention, None, bytes::Bytes::new());
        let message = event.message().expect("message");
        assert_eq!(event.realm.id, Some(1512));
        assert_eq!(message.sender_id, Some(21));
        assert_eq!(message.stream_id, Some(123));
        assert_eq!(message.command, "ping");
        assert_eq!(message.timestamp, Some(1_532_078_950));
    }
}
