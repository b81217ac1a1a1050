//! What arrives over the wire, built for tests: forwarder envelopes and signed batches
//! (Standard Webhooks, signed with [`SECRET`]), and outgoing-webhook bodies for the `helper`
//! bot ([`BOT_EMAIL`], [`TOKEN`]).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use zulip_listeners::verification::SigningKey;

/// The forwarder signing key every test server accepts (with [`super::TestApp::forwarder`]).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A valid signing key the servers do not know.
pub const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The outgoing-webhook token of the `helper` bot (the official example's).
pub const TOKEN: &str = "xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0";
/// The email of the `helper` bot (the official example's).
pub const BOT_EMAIL: &str = "outgoing-bot@localhost";

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An envelope v1 around a client-facing event; type and op are the event's. By default:
/// realm 2 (`acme`), emitted now, audience users 10 and 11.
pub struct Envelope {
    event_id: String,
    event: Value,
    realm: (i64, String),
    emitted_at_ms: i64,
    audience: Vec<i64>,
}

impl Envelope {
    pub fn new(event_id: &str, event: Value) -> Envelope {
        Envelope {
            event_id: event_id.to_string(),
            event,
            realm: (2, "acme".to_string()),
            emitted_at_ms: now_s() * 1000,
            audience: vec![10, 11],
        }
    }

    pub fn realm(mut self, id: i64, string_id: &str) -> Envelope {
        self.realm = (id, string_id.to_string());
        self
    }

    pub fn emitted_at_ms(mut self, ms: i64) -> Envelope {
        self.emitted_at_ms = ms;
        self
    }

    pub fn audience(mut self, user_ids: &[i64]) -> Envelope {
        self.audience = user_ids.to_vec();
        self
    }

    pub fn json(self) -> Value {
        let (realm_id, string_id) = self.realm;
        json!({
            "v": 1,
            "event_id": self.event_id,
            "emitted_at_ms": self.emitted_at_ms,
            "server": {"host": "chat.example.com", "zulip_version": "10.2", "feature_level": 334},
            "realm": {"id": realm_id, "uuid": "6a9b5f2e-7c1d-4e2b-9a43-0f7e1c2d3b4a", "string_id": string_id},
            "type": self.event["type"].clone(),
            "op": self.event.get("op").cloned().unwrap_or(Value::Null),
            "audience": {"count": self.audience.len(), "user_ids": self.audience},
            "event": self.event
        })
    }
}

/// [`Envelope`] with its defaults.
pub fn envelope(event_id: &str, event: Value) -> Value {
    Envelope::new(event_id, event).json()
}

/// A `message` event: a channel message from user `sender` in #Denmark > greetings.
pub fn message(id: i64, sender: i64, content: &str) -> Value {
    channel_message(id, sender, content, ("Denmark", 5, "greetings"))
}

/// A `message` event in a channel: (name, stream id, topic).
pub fn channel_message(id: i64, sender: i64, content: &str, at: (&str, i64, &str)) -> Value {
    let (channel, stream_id, topic) = at;
    json!({"type": "message", "flags": [], "message": {
        "id": id, "sender_id": sender, "sender_full_name": format!("User {sender}"),
        "sender_email": format!("user{sender}@acme.example.com"), "sender_realm_str": "acme",
        "avatar_url": null, "client": "website", "content": content, "content_type": "text/x-markdown",
        "rendered_content": format!("<p>{content}</p>"), "is_me_message": false, "reactions": [],
        "submessages": [], "recipient_id": 20, "subject": topic, "topic_links": [],
        "timestamp": 1700000000, "type": "stream", "display_recipient": channel,
        "stream_id": stream_id}})
}

/// A forwarder batch body.
pub fn batch(envelopes: Vec<Value>) -> String {
    json!({ "events": envelopes }).to_string()
}

/// `POST {base}/zulip/events` with `body`, signed like the forwarder does.
pub fn signed_events(
    http: &reqwest::Client,
    base: &str,
    webhook_id: &str,
    timestamp: i64,
    body: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    let key = SigningKey::parse(secret).expect("key");
    http.post(format!("{base}/zulip/events"))
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            key.sign(webhook_id, timestamp, body.as_bytes()),
        )
        .body(body.to_string())
}

/// An outgoing webhook to the `helper` bot: a mention in #general > t from user 10 of realm
/// `zulip`.
pub fn mention(id: i64, content: &str) -> String {
    mention_json(id, content).to_string()
}

/// [`mention`] as JSON, for tests that change a field.
pub fn mention_json(id: i64, content: &str) -> Value {
    json!({
        "bot_email": BOT_EMAIL, "bot_full_name": "Helper", "token": TOKEN, "trigger": "mention",
        "data": content,
        "message": {"id": id, "type": "stream", "content": content, "sender_id": 10,
                    "sender_email": "alice@example.com", "sender_full_name": "Alice",
                    "sender_realm_str": "zulip", "stream_id": 5, "display_recipient": "general",
                    "subject": "t"}
    })
}

/// An envelope of message `message_id` from `sender` in #ops > ci saying the build is broken
/// (what the alert rules of several tests match); audience: the sender.
pub fn broken_build(event_id: &str, message_id: i64, sender: i64) -> Value {
    let event = channel_message(message_id, sender, "the build is broken", ("ops", 5, "ci"));
    Envelope::new(event_id, event).audience(&[sender]).json()
}

/// An outgoing webhook asking `helper` to `ping` ([`mention`]).
pub fn ping(id: i64) -> String {
    mention(id, "@**Helper** ping")
}
