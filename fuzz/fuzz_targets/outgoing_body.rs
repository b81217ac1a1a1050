//! The outgoing-webhook body parsers: Zulip's JSON format and the Slack-compatible form,
//! through to the event a handler sees, plus the reply helpers applied to its text.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use zulip_listeners::events::{Event, MAX_TRIGGER_CHARS, Trigger};
use zulip_listeners::events::outgoing::{Body, strip_leading_mention};
use zulip_listeners::events::text::{MAX_MESSAGE_LENGTH, normalize_reply, truncate_chars};

fuzz_target!(|data: &[u8]| {
    let raw = bytes::Bytes::copy_from_slice(data);
    match Body::parse(false, data) {
        Ok(payload) => {
            let trigger = payload.trigger();
            check_trigger(&trigger);
            let event = payload.into_event(Arc::from("bot"), trigger, Some("Helper"), raw.clone());
            check(&event);
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    match Body::parse(true, data) {
        Ok(payload) => {
            let trigger = payload.trigger();
            check_trigger(&trigger);
            let event = payload.into_event(Arc::from("bot"), trigger, None, raw);
            check(&event);
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});

/// An unknown trigger's name is kept short and plain (it goes into logs and spans).
fn check_trigger(trigger: &Trigger) {
    let name = trigger.as_str();
    assert!(!name.is_empty() && name.chars().count() <= MAX_TRIGGER_CHARS);
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    );
}

fn check(event: &Event) {
    let _ = (event.event_type(), event.message_id(), format!("{event:?}"));
    let Some(message) = event.message() else {
        panic!("an outgoing webhook always carries a message");
    };
    // The command is the content without a leading mention: always a part of it.
    assert!(message.content.contains(message.command.as_str()));
    let any = strip_leading_mention(&message.content, None);
    assert!(message.content.contains(any));
    if let Some(reply) = normalize_reply(&message.content) {
        assert!(!reply.is_empty());
        assert!(!reply.contains('\0'));
        assert!(reply.chars().count() <= MAX_MESSAGE_LENGTH);
    }
    for max in [0, 1, 40] {
        let (cut, was_cut) = truncate_chars(&message.content, max);
        let chars = cut.chars().count();
        assert!(if was_cut {
            chars == max + 1
        } else {
            chars <= max
        });
    }
}
