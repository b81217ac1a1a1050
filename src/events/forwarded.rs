//! Events pushed by the Django forwarder: the batch body `{"events": [<envelope>, …]}`,
//! envelope v1, and Rust types for the event kinds Zulip sends in its client-facing
//! `GET /events` shape. Every field Zulip may omit is optional; unknown fields are ignored;
//! unknown types are kept as raw JSON.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Event, EventKind, MessageType, Origin, PayloadError, Realm, WireMessage};

/// Longest `event_id` accepted (the forwarder sends UUIDs).
const MAX_EVENT_ID_LEN: usize = 128;

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// One envelope, read in a single pass: its `event` is typed as it is read when `type` came
/// before it (the forwarder writes `type` first), else it is kept raw and typed afterwards.
#[derive(Default)]
struct Envelope<'a> {
    v: Option<i64>,
    event_id: Option<String>,
    emitted_at_ms: Option<i64>,
    realm: Option<EnvelopeRealm>,
    event_type: Option<String>,
    op: Option<String>,
    audience: Option<Audience>,
    event: Option<EventField<'a>>,
    shed_before: Option<u64>,
}

enum EventField<'a> {
    Typed(EventKind),
    Raw(&'a RawValue),
}

#[derive(Deserialize, Clone, Copy)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EnvelopeKey {
    V,
    EventId,
    EmittedAtMs,
    Realm,
    #[serde(rename = "type")]
    Type,
    Op,
    Audience,
    Event,
    ShedBefore,
    #[serde(other)]
    Unknown,
}

impl EnvelopeKey {
    /// The key as written, for the error about a repeated one.
    fn name(self) -> &'static str {
        match self {
            EnvelopeKey::V => "v",
            EnvelopeKey::EventId => "event_id",
            EnvelopeKey::EmittedAtMs => "emitted_at_ms",
            EnvelopeKey::Realm => "realm",
            EnvelopeKey::Type => "type",
            EnvelopeKey::Op => "op",
            EnvelopeKey::Audience => "audience",
            EnvelopeKey::Event => "event",
            EnvelopeKey::ShedBefore => "shed_before",
            EnvelopeKey::Unknown => "?",
        }
    }
}

impl<'a> Envelope<'a> {
    /// Reads an envelope; with `type_event` false its `event` is always kept raw.
    fn read(json: &'a str, type_event: bool) -> serde_json::Result<Self> {
        let mut reader = serde_json::Deserializer::from_str(json);
        let envelope =
            serde::Deserializer::deserialize_map(&mut reader, EnvelopeVisitor { type_event })?;
        reader.end()?;
        Ok(envelope)
    }
}

struct EnvelopeVisitor {
    type_event: bool,
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an envelope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope::default();
        // A key given twice is refused, as serde's derived readers do: with `type` twice the
        // event was typed by the first while the envelope kept the second.
        let mut seen = 0u16;
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            if !matches!(key, EnvelopeKey::Unknown) {
                let bit = 1u16 << (key as u16);
                if seen & bit != 0 {
                    return Err(serde::de::Error::duplicate_field(key.name()));
                }
                seen |= bit;
            }
            match key {
                EnvelopeKey::V => envelope.v = map.next_value()?,
                EnvelopeKey::EventId => envelope.event_id = map.next_value()?,
                EnvelopeKey::EmittedAtMs => envelope.emitted_at_ms = map.next_value()?,
                EnvelopeKey::Realm => envelope.realm = map.next_value()?,
                EnvelopeKey::Type => envelope.event_type = map.next_value()?,
                EnvelopeKey::Op => envelope.op = map.next_value()?,
                EnvelopeKey::Audience => envelope.audience = map.next_value()?,
                EnvelopeKey::ShedBefore => envelope.shed_before = map.next_value()?,
                EnvelopeKey::Event => {
                    envelope.event = match envelope.event_type.as_deref() {
                        Some(event_type) if self.type_event => map
                            .next_value_seed(KindOf(event_type))?
                            .map(EventField::Typed),
                        _ => map.next_value::<Option<&RawValue>>()?.map(EventField::Raw),
                    };
                }
                EnvelopeKey::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

/// Reads an event of the given type into its Rust type; `null` is no event.
struct KindOf<'t>(&'t str);

impl<'de> DeserializeSeed<'de> for KindOf<'_> {
    type Value = Option<EventKind>;

    fn deserialize<D: Deserializer<'de>>(self, event: D) -> Result<Self::Value, D::Error> {
        event.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for KindOf<'_> {
    type Value = Option<EventKind>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a `{}` event", self.0)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, event: D) -> Result<Self::Value, D::Error> {
        kind_of(self.0, event).map(Some)
    }
}

#[derive(Deserialize)]
struct EnvelopeRealm {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    string_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct Audience {
    #[serde(default)]
    user_ids: Option<Vec<i64>>,
}

/// One verified, parsed envelope.
#[derive(Debug, Clone)]
pub struct ForwardedEvent {
    pub event_id: String,
    pub realm_id: i64,
    pub realm: String,
    pub user_id: Option<i64>,
    pub event_type: String,
    pub op: Option<String>,
    pub emitted_at_ms: Option<i64>,
    /// The envelope exactly as received, for the inbox.
    pub payload: String,
    pub event: Event,
    /// Events the forwarder shed (dropped, its queue being full) since the envelope before
    /// this one: the envelope's optional `shed_before`.
    pub shed_before: u64,
}

/// Why a batch body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Malformed(String),
    #[error("the batch has {0} events; at most {1} are accepted per request")]
    TooMany(usize, usize),
}

/// Parses a batch body. Any envelope that is not v1 or lacks `event_id`, `type`, `realm.id` or
/// `event` makes the whole batch a client error naming the envelope and the field.
pub fn parse_batch(body: &[u8], max_events: usize) -> Result<Vec<ForwardedEvent>, BatchError> {
    let batch: BatchBody = serde_json::from_slice(body).map_err(|e| {
        BatchError::Malformed(format!(
            "the body must be {{\"events\": [<envelope>, …]}}: {e}"
        ))
    })?;
    if batch.events.len() > max_events {
        return Err(BatchError::TooMany(batch.events.len(), max_events));
    }
    batch
        .events
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_envelope(raw).map_err(|e| BatchError::Malformed(format!("events[{i}]: {}", e.0)))
        })
        .collect()
}

/// Parses one stored envelope (the inbox payload) again.
pub fn parse_stored(payload: &str) -> Result<ForwardedEvent, PayloadError> {
    let raw: &RawValue = serde_json::from_str(payload)
        .map_err(|e| PayloadError(format!("stored envelope is not JSON: {e}")))?;
    parse_envelope(raw)
}

fn parse_envelope(raw: &RawValue) -> Result<ForwardedEvent, PayloadError> {
    // An `event` that does not have its type's shape fails the typed read; the envelope is
    // then read again with the event raw, which `typed_kind` keeps as raw JSON.
    let envelope = Envelope::read(raw.get(), true)
        .or_else(|_| Envelope::read(raw.get(), false))
        .map_err(|e| PayloadError(format!("not an envelope: {e}")))?;
    if envelope.v != Some(1) {
        return Err(PayloadError(format!(
            "`v` must be 1 (envelope version), got {}",
            envelope.v.map_or("nothing".into(), |v| v.to_string())
        )));
    }
    let event_id = envelope
        .event_id
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| PayloadError("`event_id` is missing".into()))?;
    if event_id.len() > MAX_EVENT_ID_LEN {
        return Err(PayloadError(format!(
            "`event_id` is longer than {MAX_EVENT_ID_LEN} characters"
        )));
    }
    let realm = envelope
        .realm
        .ok_or_else(|| PayloadError("`realm` is missing".into()))?;
    let realm_id = realm
        .id
        .ok_or_else(|| PayloadError("`realm.id` is missing".into()))?;
    let event_type = envelope
        .event_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| PayloadError("`type` is missing".into()))?;
    let mut kind = match envelope.event {
        Some(EventField::Typed(kind)) => kind,
        Some(EventField::Raw(json)) => typed_kind(&event_type, json.get()),
        None => return Err(PayloadError("`event` is missing".into())),
    };
    set_op(&mut kind, &envelope.op);
    let audience = envelope.audience.unwrap_or_default();
    let user_id = user_about(&kind, audience.user_ids.as_deref());
    let realm_string = realm.string_id.unwrap_or_default();
    // Stored in text columns: PostgreSQL refuses NUL in text, and a batch it refuses would be
    // re-sent (503) forever.
    for (field, value) in [
        ("event_id", Some(event_id.as_str())),
        ("type", Some(event_type.as_str())),
        ("op", envelope.op.as_deref()),
        ("realm.string_id", Some(realm_string.as_str())),
    ] {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(PayloadError(format!("`{field}` contains a NUL character")));
        }
    }
    Ok(ForwardedEvent {
        realm_id,
        user_id,
        op: envelope.op,
        emitted_at_ms: envelope.emitted_at_ms,
        payload: raw.get().to_string(),
        shed_before: envelope.shed_before.unwrap_or(0),
        event: Event {
            origin: Origin::Forwarder {
                event_id: event_id.clone(),
            },
            realm: Realm {
                id: Some(realm_id),
                string_id: Some(realm_string.clone()),
            },
            user_id,
            occurred_at_ms: envelope.emitted_at_ms,
            kind,
        },
        event_id,
        realm: realm_string,
        event_type,
    })
}

/// Types an event kept raw; one without its type's shape stays raw JSON.
fn typed_kind(event_type: &str, json: &str) -> EventKind {
    let mut reader = serde_json::Deserializer::from_str(json);
    match kind_of(event_type, &mut reader).and_then(|kind| reader.end().map(|()| kind)) {
        Ok(kind) => kind,
        Err(error) => {
            tracing::warn!(event_type, %error, "event has an unexpected shape; kept as raw JSON");
            EventKind::Other {
                event_type: event_type.to_string(),
                raw: serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
            }
        }
    }
}

/// The Rust type for each event type Zulip sends; other types as raw JSON.
fn kind_of<'de, D: Deserializer<'de>>(event_type: &str, event: D) -> Result<EventKind, D::Error> {
    Ok(match event_type {
        "message" => {
            let e = MessageEvent::deserialize(event)?;
            EventKind::Message(Box::new(
                e.message
                    .into_message(MessageType::Stream, |c| c.to_string()),
            ))
        }
        "update_message" => EventKind::UpdateMessage(Box::new(UpdateMessage::deserialize(event)?)),
        "delete_message" => EventKind::DeleteMessage(DeleteMessage::deserialize(event)?),
        "reaction" => EventKind::Reaction(Reaction::deserialize(event)?),
        "subscription" => EventKind::Subscription(Subscription::deserialize(event)?),
        "stream" => EventKind::Stream(StreamChange::deserialize(event)?),
        "realm_user" => EventKind::RealmUser(RealmUser::deserialize(event)?),
        "presence" => EventKind::Presence(Presence::deserialize(event)?),
        "typing" => EventKind::Typing(Typing::deserialize(event)?),
        "update_message_flags" => {
            EventKind::UpdateMessageFlags(UpdateMessageFlags::deserialize(event)?)
        }
        "user_status" => EventKind::UserStatus(UserStatus::deserialize(event)?),
        "realm_emoji" => EventKind::RealmEmoji(RealmEmoji::deserialize(event)?),
        "custom_profile_fields" => {
            EventKind::CustomProfileFields(CustomProfileFields::deserialize(event)?)
        }
        _ => EventKind::Other {
            event_type: event_type.to_string(),
            raw: serde_json::Value::deserialize(event)?,
        },
    })
}

/// The envelope's `op` is the one that counts, for the kinds that have one.
fn set_op(kind: &mut EventKind, op: &Option<String>) {
    let slot = match kind {
        EventKind::Reaction(e) => &mut e.op,
        EventKind::Subscription(e) => &mut e.op,
        EventKind::Stream(e) => &mut e.op,
        EventKind::RealmUser(e) => &mut e.op,
        EventKind::Typing(e) => &mut e.op,
        EventKind::UpdateMessageFlags(e) => &mut e.op,
        EventKind::RealmEmoji(e) => &mut e.op,
        _ => return,
    };
    slot.clone_from(op);
}

/// The user an event is about: sender, actor or person; for events Zulip sends only to the
/// user concerned (own subscriptions, own flags), the single member of the audience.
fn user_about(kind: &EventKind, audience: Option<&[i64]>) -> Option<i64> {
    let sole_recipient = || match audience {
        Some([only]) => Some(*only),
        _ => None,
    };
    match kind {
        EventKind::Message(m) => m.sender_id,
        EventKind::UpdateMessage(u) => u.user_id,
        EventKind::Reaction(r) => r.user_id.or(r.user.as_ref().and_then(|u| u.user_id)),
        EventKind::RealmUser(r) => r.person.as_ref().and_then(|p| p.user_id),
        EventKind::Presence(p) => p.user_id.or_else(|| {
            p.presences
                .as_ref()
                .filter(|m| m.len() == 1)
                .and_then(|m| m.keys().next())
                .and_then(|k| k.parse().ok())
        }),
        EventKind::Typing(t) => t.sender.as_ref().and_then(|s| s.user_id),
        EventKind::UserStatus(s) => s.user_id,
        EventKind::Subscription(s)
            if matches!(s.op.as_deref(), Some("peer_add" | "peer_remove")) =>
        {
            match s.user_ids.as_slice() {
                [only] => Some(*only),
                _ => None,
            }
        }
        EventKind::Subscription(_) | EventKind::UpdateMessageFlags(_) => sole_recipient(),
        _ => None,
    }
}

#[derive(Deserialize)]
struct MessageEvent {
    message: WireMessage,
}

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

/// `delete_message` (always the bulk form from the server side).
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteMessage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub message_ids: Vec<i64>,
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub stream_id: Option<i64>,
    #[serde(default)]
    pub topic: Option<String>,
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

    fn envelope(event_type: &str, op: Option<&str>, event: &str) -> String {
        format!(
            r#"{{"v":1,"event_id":"e-{event_type}","emitted_at_ms":1700000000123,"server":{{"host":"h","zulip_version":"10.0","feature_level":300}},"realm":{{"id":2,"uuid":"u","string_id":"acme"}},"type":"{event_type}","op":{},"audience":{{"count":1,"user_ids":[10]}},"event":{event}}}"#,
            op.map_or("null".to_string(), |o| format!("\"{o}\""))
        )
    }

    fn one(event_type: &str, op: Option<&str>, event: &str) -> ForwardedEvent {
        let body = format!(r#"{{"events":[{}]}}"#, envelope(event_type, op, event));
        let mut events = parse_batch(body.as_bytes(), 100).expect("valid batch");
        events.remove(0)
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
        }
    }

    #[test]
    fn key_order_does_not_matter() {
        // `event` before `type` and `op` (the forwarder writes them first, but JSON objects
        // are unordered): the event is typed afterwards, with the envelope's op.
        let body = r#"{"events":[{"event":{"type":"reaction","user_id":10,"message_id":123,"emoji_name":"tada"},"v":1,"event_id":"late","realm":{"id":2,"string_id":"acme"},"type":"reaction","extra":{"ignored":[1,2]},"op":"add"}]}"#;
        let events = parse_batch(body.as_bytes(), 100).expect("valid batch");
        let r = &events[0];
        assert!(
            matches!(&r.event.kind, EventKind::Reaction(x) if x.op.as_deref() == Some("add") && x.message_id == Some(123))
        );
        assert_eq!((r.user_id, r.op.as_deref()), (Some(10), Some("add")));
        assert_eq!(r.payload, &body[11..body.len() - 2], "stored as received");
    }

    #[test]
    fn unknown_types_and_odd_shapes_stay_raw() {
        let x = one(
            "drafts",
            Some("add"),
            r#"{"type":"drafts","op":"add","drafts":[]}"#,
        );
        assert_eq!(x.event.event_type(), "drafts");
        assert!(matches!(x.event.kind, EventKind::Other { .. }));
        let odd = one(
            "reaction",
            Some("add"),
            r#"{"type":"reaction","message_id":"not a number"}"#,
        );
        assert!(matches!(odd.event.kind, EventKind::Other { .. }));
        assert_eq!(odd.event.event_type(), "reaction");
    }

    #[test]
    fn bad_envelopes_name_the_field() {
        let err = |body: &str| parse_batch(body.as_bytes(), 100).unwrap_err().to_string();
        assert!(err(r#"{"evts":[]}"#).contains("\"events\""));
        assert!(
            err(r#"{"events":[{"v":1,"type":"x","realm":{"id":1},"event":{}}]}"#)
                .contains("events[0]: `event_id` is missing")
        );
        assert!(
            err(r#"{"events":[{"v":2,"event_id":"a","type":"x","realm":{"id":1},"event":{}}]}"#)
                .contains("`v` must be 1")
        );
        assert!(
            err(r#"{"events":[{"v":1,"event_id":"a","type":"x","realm":{},"event":{}}]}"#)
                .contains("realm.id")
        );
        for event_type in ["drafts", "message"] {
            let body = format!(
                r#"{{"events":[{{"v":1,"event_id":"a","type":"{event_type}","realm":{{"id":1}},"event":null}}]}}"#
            );
            assert!(err(&body).contains("`event` is missing"), "{event_type}");
        }
        // Found with the batch fuzz target's key-order check: `type` twice typed the event as
        // the first and stored it as the second; read again in another key order it changed
        // meaning.
        let twice = r#"{"events":[{"v":1,"event_id":"a","realm":{"id":1},"type":"reaction","event":{"type":"reaction","user_id":10,"message_id":1,"emoji_name":"tada"},"type":"presence"}]}"#;
        assert!(
            err(twice).contains("events[0]: not an envelope: duplicate field `type`"),
            "{}",
            err(twice)
        );
        let many = format!(
            r#"{{"events":[{}]}}"#,
            vec![envelope("x", None, "{}"); 3].join(",")
        );
        assert!(
            parse_batch(many.as_bytes(), 2)
                .unwrap_err()
                .to_string()
                .contains("at most 2")
        );
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
