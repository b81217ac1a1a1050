//! The forwarder's batch body and its envelopes, and the stored envelope read again later.
#![no_main]

use libfuzzer_sys::fuzz_target;
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
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&event.payload) {
            let reordered = value.to_string();
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
