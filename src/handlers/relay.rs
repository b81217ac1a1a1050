//! `relay`: passes a bot's outgoing webhook, byte for byte, to an existing bot service (for
//! example a `zulip_botserver` or an in-house service written for Zulip's outgoing-webhook
//! format) and answers with that service's reply. Putting zulip-listeners in front of such a
//! service gives it retry deduplication, the reply deadline with late replies through the
//! REST API, and the event log, without changing it.
//!
//! Settings: `url` (required when a bot uses the handler) and `timeout` (default "30s").

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::CONTENT_TYPE;

use super::{
    Context, Effects, Handler, HandlerError, HandlerResult, Interest, SettingsError, http_client,
    only_keys,
};
use crate::config::HandlerSettings;
use crate::events::{Event, Origin, truncate_chars};

pub struct Relay {
    target: Option<(reqwest::Url, reqwest::Client)>,
}

impl Relay {
    pub const NAME: &'static str = "relay";

    pub fn from_settings(settings: &HandlerSettings) -> Result<Self, SettingsError> {
        only_keys(Self::NAME, settings, &["url", "timeout"])?;
        let problem = |key: &str, problem: String| SettingsError {
            handler: Self::NAME,
            key: key.into(),
            problem,
        };
        let target = match settings.settings.get("url") {
            None => None,
            Some(value) => {
                let url = value
                    .as_str()
                    .and_then(|s| reqwest::Url::parse(s).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| problem("url", format!("`{value}` is not an http(s) URL")))?;
                let client = http_client(Self::NAME, settings, Duration::from_secs(30))?;
                Some((url, client))
            }
        };
        Ok(Relay { target })
    }

    /// Whether a URL is configured (a bot may only list `relay` then).
    pub fn is_configured(settings: &HandlerSettings) -> bool {
        settings.settings.get("url").is_some()
    }
}

/// Reads a bot service's answer the way Zulip does: `""` or `response_not_required` mean no
/// reply, `response_string` (deprecated) wins over `content`, anything but an object is an error.
fn parse_reply(body: &[u8], form: bool) -> HandlerResult {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        HandlerError::Failed(format!(
            "the bot service's answer is not JSON: {}",
            truncate_chars(&String::from_utf8_lossy(body), 200).0
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
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn interest(&self) -> Interest {
        Interest::Types(&["message"])
    }

    fn handle<'a>(
        &'a self,
        cx: &'a Context,
        event: &'a Event,
        _effects: &'a mut Effects,
    ) -> BoxFuture<'a, HandlerResult> {
        async move {
            let Origin::Outgoing { raw, .. } = &event.origin else {
                return Ok(None);
            };
            let Some((url, client)) = &self.target else {
                return Err(HandlerError::Failed(
                    "handlers.relay.url is not configured".into(),
                ));
            };
            if cx.dry_run {
                tracing::info!(%url, "dry run: not relaying to the bot service");
                return Ok(None);
            }
            let content_type = if raw.form {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            let response = client
                .post(url.clone())
                .header(CONTENT_TYPE, content_type)
                .body(raw.bytes.clone())
                .send()
                .await
                .map_err(|e| HandlerError::Failed(format!("bot service unreachable: {e}")))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| HandlerError::Failed(format!("bot service answer unreadable: {e}")))?;
            if !status.is_success() {
                return Err(HandlerError::Failed(format!(
                    "bot service answered {status}: {}",
                    truncate_chars(&String::from_utf8_lossy(&body), 200).0
                )));
            }
            parse_reply(&body, raw.form)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
