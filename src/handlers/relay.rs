//! `relay`: passes a bot's outgoing webhook, byte for byte, to an existing bot service (for
//! example a `zulip_botserver` or an in-house service written for Zulip's outgoing-webhook
//! format) and answers with that service's reply. Putting zulip-listeners in front of such a
//! service gives it retry deduplication, the reply deadline with late replies through the
//! REST API, and the event log, without changing it.
//!
//! The bot's outgoing-webhook `token` is taken out of what is relayed: it is the secret
//! that lets anyone post as Zulip to this server, and the bot service has no use for it. A
//! service that checks a token of its own gets the one in `token` / `token_file` instead.
//!
//! Every relayed webhook carries the Standard Webhooks headers (`handlers::webhooks`):
//! `webhook-id`, the same for every attempt at one (message, listener, service), and
//! `webhook-signature` when `secret` / `secret_file` is set (configuration file only).
//!
//! Settings: `url` (required when a bot uses the handler; https://, or http:// on loopback),
//! `timeout` (default "30s"), optionally `token` or `token_file`, and optionally `secret` or
//! `secret_file`.

use std::time::Duration;

use super::webhooks;
use super::{
    BuildContext, Context, Effects, Handler, HandlerError, HandlerResult, Interest, SettingsError,
    http_client,
};
use crate::config::Secret;
use crate::events::{Event, Origin};
use crate::verification::SigningKey;

/// `[handlers.relay]` (or a listener's `settings`).
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// The bot service's URL.
    #[serde(default)]
    url: Option<String>,
    /// How long one call may take (default 30 s).
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    /// The token sent to the bot service instead of the bot's own.
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<std::path::PathBuf>,
    /// Signs every relayed webhook (Standard Webhooks); `whsec_…`.
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    secret_file: Option<std::path::PathBuf>,
}

pub struct Relay {
    target: Option<(reqwest::Url, reqwest::Client)>,
    /// The token sent to the bot service in place of the bot's own; none when unset.
    token: Option<Secret>,
    /// The listener's name, part of each relayed webhook's `webhook-id`.
    listener: String,
    /// Signs relayed webhooks, when a secret is configured.
    signing: Option<SigningKey>,
}

impl Relay {
    /// The outgoing webhook as the bot service gets it: the bot's `token` removed and this
    /// handler's own token, if any, in its place. `None` when the body cannot be read (it was
    /// read before to get here, so this does not happen); the raw body is then not sent.
    fn relayed_body(&self, bytes: &[u8], form: bool) -> Option<Vec<u8>> {
        if form {
            let mut pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).ok()?;
            pairs.retain(|(k, _)| k != "token");
            if let Some(token) = &self.token {
                pairs.push(("token".into(), token.expose().to_string()));
            }
            serde_urlencoded::to_string(&pairs)
                .ok()
                .map(String::into_bytes)
        } else {
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(bytes).ok()?;
            object.remove("token");
            if let Some(token) = &self.token {
                object.insert(
                    "token".into(),
                    serde_json::Value::String(token.expose().to_string()),
                );
            }
            serde_json::to_vec(&object).ok()
        }
    }
}

/// Reads a bot service's answer the way Zulip does: `""` or `response_not_required` mean no
/// reply, `response_string` (deprecated) wins over `content`, anything but an object is an error.
fn parse_reply(body: &[u8], form: bool) -> HandlerResult {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        HandlerError::Failed(format!(
            "the bot service's answer is not JSON ({} bytes)",
            body.len()
        ))
    })?;
    if value == serde_json::Value::String(String::new()) {
        return Ok(None);
    }
    let Some(object) = value.as_object() else {
        return Err(HandlerError::Failed(
            "the bot service's answer is not a JSON object".into(),
        ));
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    if form {
        return Ok(object.get("text").map(text));
    }
    if object.get("response_not_required").is_some_and(is_truthy) {
        return Ok(None);
    }
    Ok(object
        .get("response_string")
        .or_else(|| object.get("content"))
        .map(text))
}

fn is_truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Null => false,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

impl Handler for Relay {
    const NAME: &'static str = "relay";
    const INTEREST: Interest = Interest::Types(&["message"]);
    type Settings = RelaySettings;

    fn build(typed: RelaySettings, cx: &BuildContext<'_>) -> Result<Self, SettingsError> {
        let problem = |key: &str, problem: String| cx.problem::<Self>(key, problem);
        let target = match typed.url {
            None => None,
            Some(url) => {
                let url = crate::outbound::check_url(&url).map_err(|p| problem("url", p))?;
                let client = http_client(Self::NAME, typed.timeout, Duration::from_secs(30))?;
                Some((url, client))
            }
        };
        let token = match (typed.token, typed.token_file) {
            (Some(_), Some(_)) => {
                return Err(problem(
                    "token_file",
                    "give `token` or `token_file`, not both".into(),
                ));
            }
            (Some(token), None) => {
                let token = token.trim();
                if token.is_empty() {
                    return Err(problem("token", "must be a non-empty string".into()));
                }
                Some(Secret::new(token))
            }
            (None, Some(path)) => {
                // Read when the configuration was loaded; never opened here.
                let text = cx
                    .files
                    .content("token_file", &path)
                    .map_err(|p| problem("token_file", p))?;
                let token = text.expose().trim();
                if token.is_empty() {
                    return Err(problem(
                        "token_file",
                        format!("`{}` is empty", path.display()),
                    ));
                }
                Some(Secret::new(token))
            }
            (None, None) => None,
        };
        let signing = webhooks::signing_secret(
            typed.secret.as_ref(),
            typed.secret_file.as_deref(),
            cx.files,
        )
        .map_err(|(key, p)| problem(key, p))?;
        Ok(Relay {
            target,
            token,
            listener: cx.listener.to_string(),
            signing,
        })
    }

    /// A bot may only list a relay that has somewhere to relay to.
    fn check_bot_use(&self) -> Result<(), String> {
        match self.target {
            Some(_) => Ok(()),
            None => Err("needs a `url` setting".into()),
        }
    }

    async fn handle(&self, cx: &Context, event: &Event, _effects: &mut Effects) -> HandlerResult {
        let Origin::Outgoing { raw, .. } = &event.origin else {
            return Ok(None);
        };
        let Some((url, client)) = &self.target else {
            return Err(HandlerError::Failed(
                "handlers.relay.url is not configured".into(),
            ));
        };
        if cx.dry_run {
            tracing::info!(
                target = %crate::redact::origin_of(url),
                "dry run: not relaying to the bot service"
            );
            return Ok(None);
        }
        let content_type = if raw.form {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let Some(body) = self.relayed_body(&raw.bytes, raw.form) else {
            return Err(HandlerError::Failed(
                "the outgoing webhook could not be re-encoded without its token".into(),
            ));
        };
        let id = webhooks::webhook_id(event, &self.listener, url.as_str());
        let response =
            webhooks::webhook_post(client, url, content_type, body, &id, self.signing.as_ref())
                .send()
                .await
                .map_err(|e| {
                    HandlerError::Failed(format!(
                        "bot service unreachable: {}",
                        crate::redact::http_error(e)
                    ))
                })?;
        let status = response.status();
        let body = crate::outbound::read_answer(response, crate::outbound::ANSWER_LIMIT)
            .await
            .map_err(|e| HandlerError::Failed(format!("bot service answer unreadable: {e}")))?;
        // Only the status line is kept: the answer's content is not stored or shown, so
        // the event log cannot be used to read what a URL answers.
        if !status.is_success() {
            return Err(HandlerError::Failed(format!(
                "bot service answered {status}"
            )));
        }
        parse_reply(&body, raw.form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(token: Option<&str>) -> Relay {
        Relay {
            target: None,
            token: token.map(Secret::new),
            listener: Relay::NAME.into(),
            signing: None,
        }
    }

    #[test]
    fn the_bot_token_is_not_relayed() {
        let json = br#"{"bot_email":"b@x.org","token":"BOTSECRET","data":"hi"}"#;
        let out =
            String::from_utf8(relay(None).relayed_body(json, false).expect("json")).expect("utf-8");
        assert!(
            !out.contains("BOTSECRET") && !out.contains("token"),
            "{out}"
        );
        assert!(out.contains(r#""data":"hi""#), "{out}");
        let out = String::from_utf8(relay(Some("own")).relayed_body(json, false).expect("json"))
            .expect("utf-8");
        assert!(
            out.contains(r#""token":"own""#) && !out.contains("BOTSECRET"),
            "{out}"
        );
        let form = b"token=BOTSECRET&text=hello+there&user_name=A";
        let out = String::from_utf8(relay(Some("own")).relayed_body(form, true).expect("form"))
            .expect("utf-8");
        assert!(
            out.contains("token=own") && !out.contains("BOTSECRET"),
            "{out}"
        );
        assert!(out.contains("text=hello+there"), "{out}");
        assert!(relay(None).relayed_body(b"[1]", false).is_none());
    }

    #[test]
    fn replies_are_read_like_zulip_reads_them() {
        assert_eq!(
            parse_reply(br#"{"content":"hi"}"#, false).ok(),
            Some(Some("hi".into()))
        );
        assert_eq!(
            parse_reply(br#"{"content":"a","response_string":"b"}"#, false).ok(),
            Some(Some("b".into()))
        );
        assert_eq!(
            parse_reply(br#"{"response_not_required":true,"content":"x"}"#, false).ok(),
            Some(None)
        );
        assert_eq!(parse_reply(br#""""#, false).ok(), Some(None));
        assert_eq!(parse_reply(br#"{}"#, false).ok(), Some(None));
        assert_eq!(
            parse_reply(br#"{"text":"s"}"#, true).ok(),
            Some(Some("s".into()))
        );
        assert!(parse_reply(b"[1]", false).is_err());
        assert!(parse_reply(b"<html>", false).is_err());
        // What an answer says is not kept in the error (it would be shown in the event log).
        let error = parse_reply(b"<html>db_password=hunter2</html>", false)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("not JSON (32 bytes)"), "{error}");
    }
}
