//! Events: the typed [`Event`] every request is turned into before handlers see it — where it
//! came from, its realm, the user it is about and its [`EventKind`] — and which Rust type each
//! Zulip event type becomes (`EventKind::read`).
//!
//! The submodules: [`kinds`] (the Zulip event types handlers consume), [`outgoing`] (the
//! outgoing-webhook wire formats), [`forwarded`] (the forwarder's batch wire format),
//! [`erasure`] (stored envelopes with their content removed) and [`text`] (Zulip's text rules
//! for replies).

pub mod erasure;
pub mod forwarded;
pub mod kinds;
pub mod outgoing;
pub mod text;

use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use outgoing::WireMessage;

/// Where an event came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// An outgoing webhook for the named bot, with the body exactly as Zulip sent it.
    Outgoing {
        bot: Arc<str>,
        trigger: Trigger,
        raw: RawBody,
    },
    /// A batch posted by the Django forwarder.
    Forwarder { event_id: String },
}

impl Origin {
    pub fn source(&self) -> &'static str {
        match self {
            Origin::Outgoing { .. } => "outgoing",
            Origin::Forwarder { .. } => "forwarder",
        }
    }
}

/// A request body as received (shared, not copied).
#[derive(Debug, Clone)]
pub struct RawBody {
    pub bytes: bytes::Bytes,
    /// Slack-style form encoding rather than JSON.
    pub form: bool,
}

/// What made Zulip call an outgoing webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Mention,
    /// `direct_message` (Zulip 8.0+) or the older `private_message`.
    DirectMessage,
    /// A trigger this server does not know (Zulip's planned `all_received`, per-bot triggers):
    /// listeners run on the message, but Zulip gets no reply — the bot was not addressed.
    /// Only letters, digits, `_` and `-` of the value are kept, at most [`MAX_TRIGGER_CHARS`].
    Other(Arc<str>),
}

/// Most characters of an unknown trigger's name that are kept.
pub const MAX_TRIGGER_CHARS: usize = 64;

impl Trigger {
    /// Reads Zulip's `trigger` value.
    pub fn parse(value: &str) -> Trigger {
        match value {
            "mention" => Trigger::Mention,
            "direct_message" | "private_message" => Trigger::DirectMessage,
            other => {
                let kept: String = other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .take(MAX_TRIGGER_CHARS)
                    .collect();
                Trigger::Other(if kept.is_empty() {
                    "unknown".into()
                } else {
                    kept.into()
                })
            }
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Trigger::Mention => "mention",
            Trigger::DirectMessage => "direct_message",
            Trigger::Other(name) => name,
        }
    }

    /// Whether the message was addressed to the bot (a mention or a direct message): only
    /// then does Zulip show the bot's reply, and do replying handlers answer.
    pub fn is_addressed(&self) -> bool {
        !matches!(self, Trigger::Other(_))
    }
}

/// The organisation an event belongs to, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Realm {
    pub id: Option<i64>,
    pub string_id: Option<String>,
}

/// An event, whatever its source.
#[derive(Debug, Clone)]
pub struct Event {
    pub origin: Origin,
    pub realm: Realm,
    /// The user the event is about: sender, actor or person.
    pub user_id: Option<i64>,
    /// When Zulip emitted it (forwarded events), in Unix milliseconds.
    pub occurred_at_ms: Option<i64>,
    pub kind: EventKind,
}

/// The typed payload. Forwarded event types without a Rust type (or with a shape this server
/// does not recognise) are kept as raw JSON in [`EventKind::Other`].
#[derive(Debug, Clone)]
pub enum EventKind {
    Message(Box<Message>),
    UpdateMessage(Box<kinds::UpdateMessage>),
    DeleteMessage(kinds::DeleteMessage),
    Reaction(kinds::Reaction),
    Subscription(kinds::Subscription),
    Stream(kinds::StreamChange),
    RealmUser(kinds::RealmUser),
    Presence(kinds::Presence),
    Typing(kinds::Typing),
    UpdateMessageFlags(kinds::UpdateMessageFlags),
    UserStatus(kinds::UserStatus),
    RealmEmoji(kinds::RealmEmoji),
    CustomProfileFields(kinds::CustomProfileFields),
    Other {
        event_type: String,
        raw: serde_json::Value,
    },
}

impl Event {
    /// Zulip's event type name.
    pub fn event_type(&self) -> &str {
        match &self.kind {
            EventKind::Message(_) => "message",
            EventKind::UpdateMessage(_) => "update_message",
            EventKind::DeleteMessage(_) => "delete_message",
            EventKind::Reaction(_) => "reaction",
            EventKind::Subscription(_) => "subscription",
            EventKind::Stream(_) => "stream",
            EventKind::RealmUser(_) => "realm_user",
            EventKind::Presence(_) => "presence",
            EventKind::Typing(_) => "typing",
            EventKind::UpdateMessageFlags(_) => "update_message_flags",
            EventKind::UserStatus(_) => "user_status",
            EventKind::RealmEmoji(_) => "realm_emoji",
            EventKind::CustomProfileFields(_) => "custom_profile_fields",
            EventKind::Other { event_type, .. } => event_type,
        }
    }

    pub fn message(&self) -> Option<&Message> {
        match &self.kind {
            EventKind::Message(m) => Some(m),
            _ => None,
        }
    }

    /// The message the event is about, when there is exactly one.
    pub fn message_id(&self) -> Option<i64> {
        match &self.kind {
            EventKind::Message(m) => m.id,
            EventKind::UpdateMessage(u) => u.message_id,
            EventKind::Reaction(r) => r.message_id,
            EventKind::DeleteMessage(d) => match d.ids().as_slice() {
                [only] => Some(*only),
                _ => None,
            },
            _ => None,
        }
    }
}

impl EventKind {
    /// Reads an event of Zulip type `event_type` into its Rust type (the one place that maps
    /// type names to types); a type without one is kept as raw JSON. An event that does not
    /// have its type's shape is an error.
    fn read<'de, D: Deserializer<'de>>(event_type: &str, event: D) -> Result<EventKind, D::Error> {
        Ok(match event_type {
            "message" => {
                let e = MessageEvent::deserialize(event)?;
                EventKind::Message(Box::new(
                    e.message
                        .into_message(MessageType::Stream, |c| c.to_string()),
                ))
            }
            "update_message" => {
                EventKind::UpdateMessage(Box::new(kinds::UpdateMessage::deserialize(event)?))
            }
            "delete_message" => EventKind::DeleteMessage(kinds::DeleteMessage::deserialize(event)?),
            "reaction" => EventKind::Reaction(kinds::Reaction::deserialize(event)?),
            "subscription" => EventKind::Subscription(kinds::Subscription::deserialize(event)?),
            "stream" => EventKind::Stream(kinds::StreamChange::deserialize(event)?),
            "realm_user" => EventKind::RealmUser(kinds::RealmUser::deserialize(event)?),
            "presence" => EventKind::Presence(kinds::Presence::deserialize(event)?),
            "typing" => EventKind::Typing(kinds::Typing::deserialize(event)?),
            "update_message_flags" => {
                EventKind::UpdateMessageFlags(kinds::UpdateMessageFlags::deserialize(event)?)
            }
            "user_status" => EventKind::UserStatus(kinds::UserStatus::deserialize(event)?),
            "realm_emoji" => EventKind::RealmEmoji(kinds::RealmEmoji::deserialize(event)?),
            "custom_profile_fields" => {
                EventKind::CustomProfileFields(kinds::CustomProfileFields::deserialize(event)?)
            }
            _ => EventKind::Other {
                event_type: event_type.to_string(),
                raw: serde_json::Value::deserialize(event)?,
            },
        })
    }
}

/// A `message` event: the message in the `GET /messages` format.
#[derive(Deserialize)]
struct MessageEvent {
    message: WireMessage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Stream,
    Private,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Stream => "stream",
            MessageType::Private => "private",
        }
    }
}

/// A participant of a direct-message conversation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Recipient {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
}

/// A Zulip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Option<i64>,
    pub message_type: MessageType,
    /// The raw Markdown as sent, mention included.
    pub content: String,
    /// The text a command handler reads: `content` without a leading mention of the bot.
    pub command: String,
    pub sender_id: Option<i64>,
    pub sender_email: Option<String>,
    pub sender_full_name: Option<String>,
    pub stream_id: Option<i64>,
    /// Channel name (stream messages).
    pub channel: Option<String>,
    /// Topic; `""` is a valid topic in channels since Zulip 10.
    pub topic: Option<String>,
    /// Participants (direct messages).
    pub recipients: Vec<Recipient>,
    pub timestamp: Option<i64>,
    /// Set when the stored envelope this message was read from had its content removed (the
    /// message was deleted, or retention erased it): `content` is then empty, not what was said.
    pub content_removed: Option<erasure::Removal>,
}

/// A problem with the request body, reported to the client as 400.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

#[cfg(test)]
mod tests {
    use super::erasure::{ERASED_PREFIX, Removal, erase_envelope, is_erased, message_with_text};
    use super::forwarded::parse_stored;
    use super::forwarded::testing::envelope;
    use super::*;
    use crate::events::forwarded::testing::one;

    // Erased envelopes read back as the listeners see them (here, not in `erasure`, which the
    // envelope reader uses).
    const SECRET: &str = "zebra-4711";

    fn stream_message() -> String {
        envelope(
            "message",
            None,
            &format!(
                r#"{{"type":"message","flags":["mentioned"],"message":{{"id":123,"sender_id":10,"sender_full_name":"Iago","sender_email":"iago@acme.example.com","sender_realm_str":"acme","content":"the code is {SECRET}","rendered_content":"<p>the code is {SECRET}</p>","subject":"{SECRET} topic","topic_links":[{{"text":"{SECRET}","url":"https://x/{SECRET}"}}],"timestamp":1700000000,"type":"stream","display_recipient":"Denmark","stream_id":5,"reactions":[{{"emoji_name":"tada","user":{{"full_name":"Iago"}}}}]}}}}"#
            ),
        )
    }

    #[test]
    fn an_erased_message_keeps_its_ids_and_channel_and_no_text() {
        let erased = erase_envelope(&stream_message(), Removal::Deleted);
        assert!(!erased.contains(SECRET), "{erased}");
        assert!(
            !erased.contains("iago@") && !erased.contains("Iago"),
            "{erased}"
        );
        assert!(erased.starts_with(ERASED_PREFIX) && is_erased(&erased));
        let parsed = parse_stored(&erased).expect("still an envelope");
        assert_eq!(
            (parsed.event_id.as_str(), parsed.realm_id),
            ("e-message", 2)
        );
        let m = parsed.event.message().expect("still a message");
        assert_eq!(m.content_removed, Some(Removal::Deleted));
        assert_eq!(
            (m.id, m.sender_id, m.stream_id),
            (Some(123), Some(10), Some(5))
        );
        assert_eq!(m.channel.as_deref(), Some("Denmark"));
        assert_eq!((m.content.as_str(), &m.topic), ("", &None));
        // Erasing again changes nothing, whatever the reason.
        assert_eq!(erase_envelope(&erased, Removal::Retention), erased);
        // A message as received is not marked.
        let fresh = parse_stored(&stream_message()).expect("envelope");
        assert_eq!(fresh.event.message().and_then(|m| m.content_removed), None);
    }

    #[test]
    fn an_erased_edit_and_direct_message_keep_no_text() {
        let edit = envelope(
            "update_message",
            None,
            &format!(
                r#"{{"type":"update_message","user_id":10,"edit_timestamp":1700000100,"message_id":123,"message_ids":[123],"rendering_only":false,"stream_name":"Denmark","orig_content":"{SECRET}","orig_rendered_content":"<p>{SECRET}</p>","prev_content":"{SECRET}","content":"new {SECRET}","rendered_content":"<p>{SECRET}</p>","subject":"{SECRET}","orig_subject":"{SECRET}","flags":["read"]}}"#
            ),
        );
        let erased = erase_envelope(&edit, Removal::Retention);
        assert!(!erased.contains(SECRET), "{erased}");
        let parsed = parse_stored(&erased).expect("envelope");
        let EventKind::UpdateMessage(u) = &parsed.event.kind else {
            panic!("not an edit: {:?}", parsed.event.kind);
        };
        assert_eq!((u.message_id, u.content.as_deref()), (Some(123), None));
        assert_eq!(message_with_text(&parsed.event.kind), Some(123));

        let dm = envelope(
            "message",
            None,
            &format!(
                r#"{{"type":"message","message":{{"id":9,"type":"private","content":"{SECRET}","display_recipient":[{{"id":10,"email":"a@x.org","full_name":"Ann"}},{{"id":11,"email":"b@x.org","full_name":"Bob"}}]}}}}"#
            ),
        );
        let erased = erase_envelope(&dm, Removal::Deleted);
        assert!(
            !erased.contains(SECRET) && !erased.contains("a@x.org") && !erased.contains("Ann"),
            "{erased}"
        );
        let parsed = parse_stored(&erased).expect("envelope");
        let m = parsed.event.message().expect("message");
        assert_eq!(
            m.recipients.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![Some(10), Some(11)]
        );
    }

    #[test]
    fn reference_examples_become_typed_events() {
        let m = one(
            "message",
            None,
            r#"{"type":"message","flags":[],"message":{"id":123,"sender_id":10,"sender_full_name":"Iago","sender_email":"user10@acme.example.com","sender_realm_str":"acme","avatar_url":null,"client":"website","content":"hi **all**","content_type":"text/x-markdown","is_me_message":false,"reactions":[],"submessages":[],"recipient_id":20,"subject":"greetings","topic_links":[],"timestamp":1700000000,"type":"stream","display_recipient":"Denmark","stream_id":5}}"#,
        );
        assert_eq!(
            (m.realm_id, m.user_id, m.event.message_id()),
            (2, Some(10), Some(123))
        );
        assert_eq!(
            m.event.message().and_then(|x| x.channel.as_deref()),
            Some("Denmark")
        );

        let u = one(
            "update_message",
            None,
            r#"{"type":"update_message","user_id":10,"edit_timestamp":1700000100,"message_id":123,"rendering_only":false,"stream_name":"Denmark","stream_id":5,"message_ids":[123],"orig_content":"hi **all**","content":"hi **everyone**","is_me_message":false,"flags":["read"]}"#,
        );
        assert!(
            matches!(&u.event.kind, EventKind::UpdateMessage(x) if x.content.as_deref() == Some("hi **everyone**"))
        );
        assert_eq!(u.user_id, Some(10));

        let d = one(
            "delete_message",
            None,
            r#"{"type":"delete_message","message_ids":[123],"message_type":"stream","stream_id":5,"topic":"greetings"}"#,
        );
        assert!(matches!(&d.event.kind, EventKind::DeleteMessage(x) if x.message_ids == vec![123]));

        let r = one(
            "reaction",
            Some("add"),
            r#"{"type":"reaction","op":"add","user_id":10,"message_id":123,"emoji_name":"thumbs_up","emoji_code":"1f44d","reaction_type":"unicode_emoji"}"#,
        );
        assert!(matches!(&r.event.kind, EventKind::Reaction(x) if x.op.as_deref() == Some("add")));
        assert_eq!(r.user_id, Some(10));

        let p = one(
            "presence",
            None,
            r#"{"type":"presence","email":"user10@acme.example.com","user_id":11,"server_timestamp":1700000000.12,"presence":{"website":{"client":"website","status":"active","timestamp":1700000000,"pushable":false}}}"#,
        );
        assert!(matches!(&p.event.kind, EventKind::Presence(x) if x.status() == Some("active")));
        assert_eq!(p.user_id, Some(11));

        let t = one(
            "typing",
            Some("start"),
            r#"{"type":"typing","op":"start","message_type":"direct","sender":{"user_id":12,"email":"x"},"recipients":[{"user_id":12,"email":"x"}]}"#,
        );
        assert_eq!(t.user_id, Some(12));

        let s = one(
            "subscription",
            Some("peer_add"),
            r#"{"type":"subscription","op":"peer_add","stream_ids":[5],"user_ids":[13]}"#,
        );
        assert_eq!(s.user_id, Some(13));
        let f = one(
            "update_message_flags",
            Some("add"),
            r#"{"type":"update_message_flags","op":"add","operation":"add","flag":"starred","messages":[123],"all":false}"#,
        );
        assert_eq!(f.user_id, Some(10), "the acting user is the audience");

        let ru = one(
            "realm_user",
            Some("update"),
            r#"{"type":"realm_user","op":"update","person":{"user_id":14,"is_active":false}}"#,
        );
        assert_eq!(ru.user_id, Some(14));
    }
}
