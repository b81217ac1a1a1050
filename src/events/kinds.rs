//! The Zulip event types handlers consume, in the client-facing `GET /events` shape Zulip
//! sends (`update_message`, `reaction`, `presence`, …): one struct per type, every field Zulip
//! may omit optional, unknown fields ignored, collections sent as `null` read as empty.
//! [`super::EventKind`] names which type each one becomes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// `update_message`: a content edit, a topic or channel move, or a re-rendering.
#[derive(Debug, Clone, Deserialize)]
pub struct UpdateMessage {
    /// The editor; `None` for Zulip's own re-rendering (link previews).
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub message_id: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message_ids: Vec<i64>,
    #[serde(default)]
    pub edit_timestamp: Option<i64>,
    #[serde(default)]
    pub rendering_only: Option<bool>,
    /// New raw content, when the content changed.
    #[serde(default)]
    pub content: Option<String>,
    /// New topic, when the topic changed.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub orig_subject: Option<String>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub new_stream_id: Option<i64>,
    #[serde(default)]
    pub stream_name: Option<String>,
    #[serde(default)]
    pub propagate_mode: Option<String>,
}

/// `delete_message` (always the bulk form from the server side; the legacy singular
/// `message_id` is read too).
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteMessage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub message_ids: Vec<i64>,
    #[serde(default)]
    pub message_id: Option<i64>,
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub topic: Option<String>,
}

impl DeleteMessage {
    /// Every message deleted: `message_ids` and the singular `message_id`.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids = self.message_ids.clone();
        if let Some(id) = self.message_id
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        ids
    }
}

/// A `{user_id, email, full_name}` object as older events carry it.
#[derive(Debug, Clone, Deserialize)]
pub struct UserRef {
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub email: Option<String>,
}

/// `reaction` `add` / `remove`.
#[derive(Debug, Clone, Deserialize)]
pub struct Reaction {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub user: Option<UserRef>,
    #[serde(default)]
    pub message_id: Option<i64>,
    #[serde(default)]
    pub emoji_name: Option<String>,
    #[serde(default)]
    pub emoji_code: Option<String>,
    #[serde(default)]
    pub reaction_type: Option<String>,
}

/// `subscription` (`add`, `remove`, `update`, `peer_add`, `peer_remove`).
#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub subscriptions: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream_ids: Vec<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub user_ids: Vec<i64>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub property: Option<String>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

/// A channel named in a `subscription` event: the `stream_id` and `name` of one entry of
/// `subscriptions` (`add`: the full subscription; `remove`: just these two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRef {
    pub stream_id: Option<i64>,
    pub name: Option<String>,
}

impl Subscription {
    /// The channels of `subscriptions`; entries without an id or a name are left out.
    pub fn channels(&self) -> Vec<ChannelRef> {
        self.subscriptions
            .iter()
            .filter_map(|entry| {
                let channel = ChannelRef {
                    stream_id: entry.get("stream_id").and_then(serde_json::Value::as_i64),
                    name: entry
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string),
                };
                (channel.stream_id.is_some() || channel.name.is_some()).then_some(channel)
            })
            .collect()
    }
}

/// `stream` (`create`, `delete`, `update`).
#[derive(Debug, Clone, Deserialize)]
pub struct StreamChange {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub streams: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream_ids: Vec<i64>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub property: Option<String>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

/// The `person` of a `realm_user` event: `user_id` plus whatever changed.
#[derive(Debug, Clone, Deserialize)]
pub struct Person {
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
    #[serde(default)]
    pub is_bot: Option<bool>,
    #[serde(default)]
    pub role: Option<i64>,
}

/// `realm_user` (`add`, `update`, `remove`).
#[derive(Debug, Clone, Deserialize)]
pub struct RealmUser {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub person: Option<Person>,
    /// Set on the placeholder `add` sent to guests who cannot see the new user (one of up to
    /// three `add` events Zulip sends for one new user); its name is not the user's.
    #[serde(default)]
    pub inaccessible_user: Option<bool>,
}

/// One client's entry in a legacy presence event.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientPresence {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub timestamp: Option<f64>,
}

/// One user's entry in a modern presence event.
#[derive(Debug, Clone, Deserialize)]
pub struct ModernPresence {
    #[serde(default)]
    pub active_timestamp: Option<f64>,
    #[serde(default)]
    pub idle_timestamp: Option<f64>,
}

/// `presence`, legacy (`user_id` + per-client `presence`) or modern (`presences` by user id).
#[derive(Debug, Clone, Deserialize)]
pub struct Presence {
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub server_timestamp: Option<f64>,
    #[serde(default)]
    pub presence: Option<BTreeMap<String, ClientPresence>>,
    #[serde(default)]
    pub presences: Option<BTreeMap<String, ModernPresence>>,
    /// Zulip ≥ 12 (PR #35627) sends the internal event with `legacy_presence` (per client,
    /// like `presence`) and `modern_presence` (this user's timestamps) instead; forwarders
    /// from before that change pass it through unchanged.
    #[serde(default)]
    pub legacy_presence: Option<BTreeMap<String, ClientPresence>>,
    #[serde(default)]
    pub modern_presence: Option<ModernPresence>,
}

impl Presence {
    /// `active` when any client reports active, else `idle` when one reports idle.
    pub fn status(&self) -> Option<&'static str> {
        if let Some(clients) = self.presence.as_ref().or(self.legacy_presence.as_ref()) {
            let statuses: Vec<&str> = clients
                .values()
                .filter_map(|c| c.status.as_deref())
                .collect();
            if statuses.contains(&"active") {
                return Some("active");
            }
            if statuses.contains(&"idle") {
                return Some("idle");
            }
        }
        let entry = match &self.presences {
            Some(users) => users.values().next(),
            None => self.modern_presence.as_ref(),
        }?;
        Some(if entry.active_timestamp >= entry.idle_timestamp {
            "active"
        } else {
            "idle"
        })
    }
}

/// For collections Zulip may send as `null` (pydantic events dumped without `exclude_none`):
/// `null` reads as empty, like an absent key.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `typing` `start` / `stop`.
#[derive(Debug, Clone, Deserialize)]
pub struct Typing {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub sender: Option<UserRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub recipients: Vec<UserRef>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub topic: Option<String>,
}

/// `update_message_flags` `add` / `remove`.
#[derive(Debug, Clone, Deserialize)]
pub struct UpdateMessageFlags {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub flag: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub messages: Vec<i64>,
    #[serde(default)]
    pub all: Option<bool>,
}

/// `user_status`.
#[derive(Debug, Clone, Deserialize)]
pub struct UserStatus {
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub away: Option<bool>,
    #[serde(default)]
    pub status_text: Option<String>,
    #[serde(default)]
    pub emoji_name: Option<String>,
}

/// `realm_emoji` (the complete set each time).
#[derive(Debug, Clone, Deserialize)]
pub struct RealmEmoji {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub realm_emoji: BTreeMap<String, serde_json::Value>,
}

/// `custom_profile_fields` (the complete list each time).
#[derive(Debug, Clone, Deserialize)]
pub struct CustomProfileFields {
    #[serde(default, deserialize_with = "null_as_default")]
    pub fields: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::events::forwarded::testing::one;

    #[test]
    fn presence_in_the_zulip_12_internal_shape_keeps_its_status() {
        // `send_presence_changed` since Zulip PR #35627: no `presence` / `presences` key.
        let p = one(
            "presence",
            None,
            r#"{"type":"presence","email":"user11@acme.example.com","user_id":11,"server_timestamp":1700000000.5,"legacy_presence":{"website":{"client":"website","status":"idle","timestamp":1700000000,"pushable":false}},"modern_presence":{"active_timestamp":1699990000,"idle_timestamp":1700000000}}"#,
        );
        assert!(matches!(&p.event.kind, EventKind::Presence(x) if x.status() == Some("idle")));
        assert_eq!(p.user_id, Some(11));
        let modern_only = one(
            "presence",
            None,
            r#"{"type":"presence","user_id":11,"modern_presence":{"active_timestamp":1700000000,"idle_timestamp":1699990000}}"#,
        );
        assert!(
            matches!(&modern_only.event.kind, EventKind::Presence(x) if x.status() == Some("active"))
        );
        // The client-facing modern form (a normalising forwarder) still reads.
        let modern = one(
            "presence",
            None,
            r#"{"type":"presence","presences":{"11":{"active_timestamp":1700000000,"idle_timestamp":1700000000}}}"#,
        );
        assert_eq!(modern.user_id, Some(11));
        assert!(
            matches!(&modern.event.kind, EventKind::Presence(x) if x.status() == Some("active"))
        );
    }

    #[test]
    fn nulls_for_optional_fields_are_absent_fields() {
        // Pydantic typing events (Zulip PR #39243) dumped without `exclude_none`.
        let channel = one(
            "typing",
            Some("start"),
            r#"{"type":"typing","op":"start","message_type":"stream","sender":{"user_id":12,"email":"x"},"recipients":null,"stream_id":5,"topic":"greetings"}"#,
        );
        assert!(
            matches!(&channel.event.kind, EventKind::Typing(t) if t.recipients.is_empty() && t.stream_id == Some(5))
        );
        assert_eq!(channel.user_id, Some(12));
        let direct = one(
            "typing",
            Some("stop"),
            r#"{"type":"typing","op":"stop","message_type":"direct","sender":{"user_id":12,"email":"x"},"recipients":[{"user_id":13,"email":"y"}],"stream_id":null,"topic":null}"#,
        );
        assert!(
            matches!(&direct.event.kind, EventKind::Typing(t) if t.recipients.len() == 1 && t.topic.is_none())
        );
        for (event_type, op, event) in [
            (
                "delete_message",
                None,
                r#"{"type":"delete_message","message_ids":null,"message_id":7}"#,
            ),
            (
                "subscription",
                Some("peer_add"),
                r#"{"type":"subscription","op":"peer_add","stream_ids":[5],"user_ids":[13],"subscriptions":null}"#,
            ),
            (
                "stream",
                Some("delete"),
                r#"{"type":"stream","op":"delete","streams":null,"stream_ids":[5]}"#,
            ),
            (
                "update_message_flags",
                Some("add"),
                r#"{"type":"update_message_flags","op":"add","flag":"read","messages":null,"all":null}"#,
            ),
            (
                "realm_emoji",
                Some("update"),
                r#"{"type":"realm_emoji","op":"update","realm_emoji":null}"#,
            ),
            (
                "custom_profile_fields",
                None,
                r#"{"type":"custom_profile_fields","fields":null}"#,
            ),
            (
                "presence",
                None,
                r#"{"type":"presence","user_id":11,"presence":null,"presences":null,"legacy_presence":{"website":{"status":"active","timestamp":null}},"modern_presence":null}"#,
            ),
        ] {
            let e = one(event_type, op, event);
            assert!(
                !matches!(e.event.kind, EventKind::Other { .. }),
                "{event_type} with nulls stayed raw"
            );
            if let EventKind::DeleteMessage(d) = &e.event.kind {
                assert_eq!(d.ids(), vec![7], "the singular id counts");
            }
        }
    }

    #[test]
    fn subscription_add_and_realm_user_add_carry_what_a_greeting_needs() {
        let s = one(
            "subscription",
            Some("add"),
            r##"{"type":"subscription","op":"add","subscriptions":[{"name":"Denmark","stream_id":5,"color":"#76ce90","is_muted":false,"subscribers":[10],"subscriber_count":1},{"color":"#fff"},null]}"##,
        );
        let EventKind::Subscription(sub) = &s.event.kind else {
            panic!("not typed: {:?}", s.event.kind);
        };
        assert_eq!(
            sub.channels(),
            vec![ChannelRef {
                stream_id: Some(5),
                name: Some("Denmark".into())
            }]
        );
        // One event per subscriber, sent to that subscriber: the audience's only member.
        assert_eq!(s.user_id, Some(10));

        let u = one(
            "realm_user",
            Some("add"),
            r#"{"type":"realm_user","op":"add","inaccessible_user":true,"person":{"user_id":14,"full_name":"Unknown user","is_bot":null,"is_active":true}}"#,
        );
        let EventKind::RealmUser(user) = &u.event.kind else {
            panic!("not typed: {:?}", u.event.kind);
        };
        assert_eq!(user.inaccessible_user, Some(true));
        assert_eq!(user.person.as_ref().and_then(|p| p.is_bot), None);
        assert_eq!(u.user_id, Some(14));
    }
}
