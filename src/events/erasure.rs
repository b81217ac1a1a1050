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
