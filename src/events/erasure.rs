//! Erasing what a stored forwarder envelope says while keeping what it is. A message deleted in
//! Zulip, and every envelope older than the retention period, keeps its metadata (event id,
//! realm, type, op, audience) and the ids, times, kinds and channel names inside its event, so
//! that processing state, de-duplication and dead letters still work; every other string —
//! content, rendered content, topics, earlier versions, names, emails — is dropped.
//!
//! An erased envelope starts with the marker `{"content_removed":"<why>",` ([`Removal`]): the
//! envelope reader hands it to the listeners (a message then carries
//! [`super::Message::content_removed`] and no text), and SQL tells an erased payload by its
//! first bytes ([`ERASED_PREFIX`]), which no envelope as received has.

use serde_json::{Map, Value};

use super::EventKind;

/// The envelope key of the marker.
pub const MARKER: &str = "content_removed";

/// How every erased payload begins (its first key is the marker).
pub const ERASED_PREFIX: &str = "{\"content_removed\":";

/// Why an envelope's content was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The message was deleted in Zulip.
    Deleted,
    /// The envelope outlived the retention period.
    Retention,
}

impl Removal {
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Deleted => "deleted",
            Removal::Retention => "retention",
        }
    }

    /// The marker's value as stored; anything but `deleted` counts as removed by retention.
    pub fn parse(value: &str) -> Removal {
        match value {
            "deleted" => Removal::Deleted,
            _ => Removal::Retention,
        }
    }
}

/// Envelope keys kept as they are: what the forwarder writes about an event, never its content.
const ENVELOPE_KEYS: &[&str] = &[
    "v",
    "event_id",
    "emitted_at_ms",
    "realm",
    "type",
    "op",
    "audience",
    "server",
    "shed_before",
];

/// Keys whose string values survive inside the event: kinds, flags, emoji, clients, and the
/// names of channels and realms (a listener's scope may name a channel). Every other string
/// goes; numbers, booleans and nulls (ids, times, flags) stay.
const KEPT_STRINGS: &[&str] = &[
    "type",
    "op",
    "operation",
    "message_type",
    "propagate_mode",
    "flag",
    "flags",
    "reaction_type",
    "emoji_code",
    "emoji_name",
    "client",
    "content_type",
    "display_recipient",
    "stream_name",
    "name",
    "sender_realm_str",
    "property",
    "status",
];

/// The message whose text an event carries: a `message` event's message, the message an
/// `update_message` edits (its content, earlier content and rendering), a `submessage`'s
/// message. Other events about a message (reactions, flags) carry no text of it.
pub fn message_with_text(kind: &EventKind) -> Option<i64> {
    match kind {
        EventKind::Message(m) => m.id,
        EventKind::UpdateMessage(u) => u.message_id,
        EventKind::Other { event_type, raw } if event_type == "submessage" => {
            raw.get("message_id").and_then(Value::as_i64)
        }
        _ => None,
    }
}

/// Whether a stored payload was erased already.
pub fn is_erased(payload: &str) -> bool {
    payload.starts_with(ERASED_PREFIX)
}

/// The envelope `payload` with its content removed for `why`; an erased one stays as it is
/// (its marker unchanged). A payload that is not a JSON object keeps nothing (`""`).
pub fn erase_envelope(payload: &str, why: Removal) -> String {
    if is_erased(payload) {
        return payload.to_string();
    }
    let Ok(Value::Object(envelope)) = serde_json::from_str::<Value>(payload) else {
        return String::new();
    };
    let mut kept = Map::new();
    for (key, value) in envelope {
        if key == "event" {
            if let Some(event) = scrub(&key, value) {
                kept.insert(key, event);
            }
        } else if ENVELOPE_KEYS.contains(&key.as_str()) {
            kept.insert(key, value);
        }
    }
    // Serialising a map of JSON values cannot fail; the fallback keeps this free of a panic.
    let rest = serde_json::to_string(&Value::Object(kept)).unwrap_or_else(|_| "{}".into());
    let rest = rest.strip_prefix('{').unwrap_or("}");
    let comma = if rest == "}" { "" } else { "," };
    format!("{ERASED_PREFIX}\"{}\"{comma}{rest}", why.as_str())
}

/// `value` (found under `key`) without the strings that may say something a person wrote or
/// who they are; objects and arrays are walked, their members judged by their own keys.
fn scrub(key: &str, value: Value) -> Option<Value> {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => Some(value),
        Value::String(_) => KEPT_STRINGS.contains(&key).then_some(value),
        Value::Array(items) => Some(Value::Array(
            items.into_iter().filter_map(|v| scrub(key, v)).collect(),
        )),
        Value::Object(members) => Some(Value::Object(
            members
                .into_iter()
                .filter(|(k, _)| k != MARKER)
                .filter_map(|(k, v)| scrub(&k, v).map(|v| (k, v)))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::forwarded::parse_stored;
    use crate::events::forwarded::testing::envelope;

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
    fn what_is_not_an_envelope_keeps_nothing() {
        assert_eq!(erase_envelope("not json", Removal::Deleted), "");
        assert_eq!(erase_envelope("[1,2]", Removal::Deleted), "");
        assert_eq!(
            erase_envelope("{}", Removal::Deleted),
            r#"{"content_removed":"deleted"}"#
        );
        assert_eq!(Removal::parse("deleted"), Removal::Deleted);
        assert_eq!(Removal::parse("later"), Removal::Retention);
    }
}
