//! The Django forwarder's batch wire format: the body `{"events": [<envelope>, …]}` and
//! envelope v1, read in one pass by a hand-written visitor (measured; see docs/benchmarks.md), then
//! checked field by field into [`ForwardedEvent`]s. The event inside is typed by
//! `EventKind::read`; the envelope's `op` is the one that counts, and its audience names the
//! user for events sent only to that user.

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Event, EventKind, Origin, PayloadError, Realm};

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
    /// Set on a stored envelope whose content was removed ([`super::erasure`]).
    content_removed: Option<String>,
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
    ContentRemoved,
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
            EnvelopeKey::ContentRemoved => super::erasure::MARKER,
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
                EnvelopeKey::ContentRemoved => envelope.content_removed = map.next_value()?,
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
        EventKind::read(self.0, event).map(Some)
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
    if let (Some(why), EventKind::Message(m)) = (&envelope.content_removed, &mut kind) {
        m.content_removed = Some(super::erasure::Removal::parse(why));
    }
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
    match EventKind::read(event_type, &mut reader).and_then(|kind| reader.end().map(|()| kind)) {
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

/// Test helpers: an event in a complete envelope, read the way a batch is.
#[cfg(test)]
pub(crate) mod testing {
    use super::{ForwardedEvent, parse_batch};

    pub(crate) fn envelope(event_type: &str, op: Option<&str>, event: &str) -> String {
        format!(
            r#"{{"v":1,"event_id":"e-{event_type}","emitted_at_ms":1700000000123,"server":{{"host":"h","zulip_version":"10.0","feature_level":300}},"realm":{{"id":2,"uuid":"u","string_id":"acme"}},"type":"{event_type}","op":{},"audience":{{"count":1,"user_ids":[10]}},"event":{event}}}"#,
            op.map_or("null".to_string(), |o| format!("\"{o}\""))
        )
    }

    pub(crate) fn one(event_type: &str, op: Option<&str>, event: &str) -> ForwardedEvent {
        let body = format!(r#"{{"events":[{}]}}"#, envelope(event_type, op, event));
        let mut events = parse_batch(body.as_bytes(), 100).expect("valid batch");
        events.remove(0)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{envelope, one};
    use super::*;

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
}
