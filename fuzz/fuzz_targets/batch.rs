//! The forwarder's batch body and its envelopes, and the stored envelope read again later.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::events::forwarded::{BatchError, parse_batch, parse_stored};

fuzz_target!(|data: &[u8]| {
    let events = match parse_batch(data, 100) {
        Ok(events) => events,
        Err(BatchError::TooMany(n, max)) => {
            assert!(n > max);
            return;
        }
        Err(BatchError::Malformed(message)) => {
            assert!(!message.is_empty());
            return;
        }
    };
    for event in &events {
        assert!(!event.event_id.trim().is_empty());
        assert!(event.event_id.len() <= 128);
        // The inbox stores the id as its compact key and must give back the same text.
        assert_eq!(EventKey::of(&event.event_id).id(), event.event_id);
        assert!(!event.event_type.is_empty());
        assert_eq!(event.event.event_type(), event.event_type);
        let _ = (event.event.message_id(), format!("{event:?}"));
        // The inbox stores `payload` and reads it again when it dispatches.
        let stored = match parse_stored(&event.payload) {
            Ok(stored) => stored,
            Err(e) => panic!("a stored envelope does not parse again: {e}"),
        };
        assert_eq!(format!("{:?}", stored.event), format!("{:?}", event.event));
        // The envelope read with its keys in another order (serde_json's map sorts them,
        // which puts `event` before `type`) must mean the same thing.
        // A key repeated in an object cannot survive the reordering (the map keeps one), so
        // such envelopes are left out of this comparison.
        let unique_keys = serde_json::from_str::<UniqueKeys>(&event.payload).is_ok();
        if let (true, Ok(value)) = (
            unique_keys,
            serde_json::from_str::<serde_json::Value>(&event.payload),
        ) {
            let reordered = value.to_string();
            // serde_json's float parsing is not exact: a long mantissa read, printed and read
            // again can move by one bit. The stored payload is the text as received, so such
            // envelopes are left out too.
            if serde_json::from_str::<serde_json::Value>(&reordered).ok() != Some(value) {
                continue;
            }
            match parse_stored(&reordered) {
                Ok(again) => {
                    assert_eq!(again.event_type, event.event_type);
                    assert_eq!(again.event_id, event.event_id);
                    assert_eq!(again.realm_id, event.realm_id);
                    assert_eq!(again.user_id, event.user_id);
                    assert_eq!(
                        format!("{:?}", again.event.kind),
                        format!("{:?}", event.event.kind)
                    );
                }
                Err(e) => panic!("the same envelope with its keys reordered is refused: {e}"),
            }
        }
    }
});

/// Any JSON value whose objects never repeat a key.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON without repeated keys")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(serde::de::Error::custom("repeated key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}
