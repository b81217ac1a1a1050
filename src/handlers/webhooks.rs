//! The Standard Webhooks headers every webhook a listener sends carries (keyword alerts,
//! relayed bot webhooks; sent with [`webhook_post`] through a client of
//! [`crate::outbound`]):
//!
//! * `webhook-id`, the same for every attempt at one (event, listener, target) — a retry, a
//!   replay, a run repeated after a crash or by another process — so that a receiver can drop
//!   a repeat ([`webhook_id`]);
//! * `webhook-timestamp`, per attempt;
//! * `webhook-signature` when the listener has a signing secret in the configuration file
//!   ([`signing_secret`]), signed by [`SigningKey::sign`], the code that checks the
//!   forwarder's signatures. Runtime changes cannot set it (`listeners::changes` refuses
//!   `secret` and every `*_file` key).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use sha2::{Digest, Sha256};

use crate::config::{Secret, SettingFiles};
use crate::events::{Event, Origin};
use crate::verification::SigningKey;

/// The `webhook-id` of one outside effect, what `listener` sends to `target` about `event`:
/// the same on every attempt at it (a retry, a replay, a run repeated after a crash or by
/// another process), different for every other (event, listener, target). A forwarded event
/// is named by its event id; an outgoing webhook by its bot and Zulip's message id, which
/// Zulip's own retries repeat.
pub fn webhook_id(event: &Event, listener: &str, target: &str) -> String {
    let mut hash = Sha256::new();
    match &event.origin {
        Origin::Forwarder { event_id } => {
            part(&mut hash, b"forwarded");
            part(&mut hash, event_id.as_bytes());
        }
        Origin::Outgoing { bot, raw, .. } => {
            part(&mut hash, b"outgoing");
            part(&mut hash, bot.as_bytes());
            match event.message().and_then(|m| m.id) {
                Some(id) => part(&mut hash, id.to_string().as_bytes()),
                None => part(&mut hash, &Sha256::digest(&raw.bytes)),
            }
        }
    }
    part(&mut hash, listener.as_bytes());
    part(&mut hash, target.as_bytes());
    format!("msg_{}", URL_SAFE_NO_PAD.encode(&hash.finalize()[..18]))
}

/// Adds one length-prefixed part, so that no two lists of parts hash alike.
fn part(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}

/// The Standard Webhooks headers of one attempt at sending `body` at `timestamp` (Unix
/// seconds): `webhook-id`, `webhook-timestamp`, and `webhook-signature` (`v1,<base64 HMAC>`
/// of `id.timestamp.body`) when there is a key.
pub fn webhook_headers(
    id: &str,
    timestamp: i64,
    body: &[u8],
    key: Option<&SigningKey>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    if let Some(key) = key {
        headers.push(("webhook-signature", key.sign(id, timestamp, body)));
    }
    headers
}

/// A POST of `body` (of `content_type`) to `url`, with the Standard Webhooks headers of this
/// attempt (`id` from [`webhook_id`]; signed when `key` is given).
pub fn webhook_post(
    client: &reqwest::Client,
    url: &Url,
    content_type: &str,
    body: Vec<u8>,
    id: &str,
    key: Option<&SigningKey>,
) -> reqwest::RequestBuilder {
    let timestamp = crate::clock::now_ms().div_euclid(1000);
    let mut request = client.post(url.clone()).header(CONTENT_TYPE, content_type);
    for (name, value) in webhook_headers(id, timestamp, &body, key) {
        request = request.header(name, value);
    }
    request.body(body)
}

/// A listener's webhook signing key from its settings: `secret` (`whsec_` and base64 of at
/// least 24 bytes, as `zulip-listeners gen-secret` makes) or `secret_file` (a file holding
/// one, read with the configuration into `files`), not both; `None` when neither is given.
/// The error names the key at fault and never repeats the secret.
pub fn signing_secret(
    secret: Option<&Secret>,
    file: Option<&Path>,
    files: &SettingFiles,
) -> Result<Option<SigningKey>, (&'static str, String)> {
    let (key, text) = match (secret, file) {
        (Some(_), Some(_)) => {
            return Err((
                "secret_file",
                "give `secret` or `secret_file`, not both".into(),
            ));
        }
        (Some(secret), None) => ("secret", secret.expose().to_string()),
        (None, Some(path)) => {
            let text = files
                .content("secret_file", path)
                .map_err(|p| ("secret_file", p))?;
            ("secret_file", text.expose().to_string())
        }
        (None, None) => return Ok(None),
    };
    SigningKey::parse(&text)
        .map(Some)
        .map_err(|e| (key, format!("the signing secret {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks test vector (the one `verification` checks against).
    const V1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const V1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const V1_TS: i64 = 1614265330;
    const V1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const V1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key() -> SigningKey {
        SigningKey::parse(V1_SECRET).expect("valid key")
    }

    #[test]
    fn outbound_webhooks_are_signed_like_the_published_vector() {
        let headers = webhook_headers(V1_ID, V1_TS, V1_BODY, Some(&key()));
        assert_eq!(
            headers,
            vec![
                ("webhook-id", V1_ID.to_string()),
                ("webhook-timestamp", V1_TS.to_string()),
                ("webhook-signature", V1_SIG.to_string()),
            ]
        );
        // What the server's own verifier accepts, too.
        let ts = V1_TS.to_string();
        let received = crate::verification::SignedHeaders {
            id: Some(V1_ID),
            timestamp: Some(&ts),
            signature: Some(V1_SIG),
        };
        assert_eq!(
            crate::verification::verify(&[key()], received, V1_BODY, V1_TS, 300),
            Ok(V1_ID)
        );
        // Without a secret: the id and timestamp only.
        let unsigned = webhook_headers(V1_ID, V1_TS, V1_BODY, None);
        assert_eq!(unsigned.len(), 2);
        assert!(
            unsigned
                .iter()
                .all(|(name, _)| *name != "webhook-signature")
        );
    }

    fn forwarded(event_id: &str) -> Event {
        Event {
            origin: Origin::Forwarder {
                event_id: event_id.into(),
            },
            realm: Default::default(),
            user_id: None,
            occurred_at_ms: None,
            kind: crate::events::EventKind::Other {
                event_type: "message".into(),
                raw: serde_json::Value::Null,
            },
        }
    }

    #[test]
    fn webhook_ids_are_stable_per_event_listener_and_target() {
        let id = webhook_id(&forwarded("e1"), "keyword_alerts", "outage");
        assert_eq!(id, webhook_id(&forwarded("e1"), "keyword_alerts", "outage"));
        assert!(id.starts_with("msg_") && id.len() == 28, "{id}");
        assert!(!id.contains('.'), "{id}");
        let others = [
            webhook_id(&forwarded("e2"), "keyword_alerts", "outage"),
            webhook_id(&forwarded("e1"), "eng-alerts", "outage"),
            webhook_id(&forwarded("e1"), "keyword_alerts", "deploy"),
            // The parts are length-prefixed: moving a boundary changes the id.
            webhook_id(&forwarded("e1k"), "eyword_alerts", "outage"),
        ];
        for other in &others {
            assert_ne!(&id, other);
        }
    }

    #[test]
    fn signing_secrets_come_from_a_value_or_a_file_and_errors_hide_them() {
        let none = SettingFiles::default();
        let secret = Secret::new(V1_SECRET);
        assert!(matches!(
            signing_secret(Some(&secret), None, &none),
            Ok(Some(_))
        ));
        assert!(matches!(signing_secret(None, None, &none), Ok(None)));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("alerts.whsec");
        std::fs::write(&path, format!("{V1_SECRET}\n")).expect("write");
        let config = crate::config::Config::from_toml(&format!(
            "[handlers.keyword_alerts]\nsecret_file = \"{}\"\n",
            path.display()
        ))
        .expect("valid");
        let files = config.handler_settings("keyword_alerts").files;
        let from_file = signing_secret(None, Some(&path), &files)
            .expect("read")
            .expect("key");
        assert_eq!(from_file.sign(V1_ID, V1_TS, V1_BODY), V1_SIG);
        let (key, problem) = signing_secret(Some(&secret), Some(&path), &files).unwrap_err();
        assert_eq!(key, "secret_file", "{problem}");
        let short = Secret::new("whsec_c2hvcnQtU0VDUkVU");
        let (key, problem) = signing_secret(Some(&short), None, &none).unwrap_err();
        assert_eq!(key, "secret");
        assert!(
            problem.contains("too short") && !problem.contains("c2hvcnQtU0VDUkVU"),
            "{problem}"
        );
        // A path the configuration file did not name is not opened.
        let (key, problem) = signing_secret(None, Some(&path), &none).unwrap_err();
        assert!(
            key == "secret_file" && problem.contains("not read from the configuration file"),
            "{problem}"
        );
    }
}
