//! The small part of Zulip's REST API the server calls: `POST /api/v1/messages`, to deliver a
//! bot's reply that was ready only after the HTTP answer had gone back to Zulip, and to post
//! alerts and greetings as a bot.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{BotConfig, Secret};
use crate::events::{Message, MessageType};

/// A bot's REST credentials.
#[derive(Debug, Clone)]
pub struct BotApi {
    /// The Zulip server, without a trailing slash.
    pub site: String,
    pub email: String,
    pub api_key: Secret,
}

impl BotApi {
    /// A bot's credentials, when its configuration names the Zulip server (`site`).
    pub fn from_config(bot: &BotConfig) -> Option<BotApi> {
        let site = bot.site.as_ref()?;
        Some(BotApi {
            site: site.trim_end_matches('/').to_string(),
            email: bot.email.clone(),
            api_key: bot.api_key.clone(),
        })
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A channel (by id when known, else by name) and topic.
    Channel { to: String, topic: String },
    /// A direct message to these users (ids when known, else emails), as a JSON list.
    Direct { to: String },
}

impl Destination {
    /// The conversation a message was sent in, so that a reply lands next to it.
    pub fn reply_to(message: &Message) -> Option<Destination> {
        match message.message_type {
            MessageType::Stream => {
                let to = match (&message.stream_id, &message.channel) {
                    (Some(id), _) => id.to_string(),
                    (None, Some(name)) => name.clone(),
                    (None, None) => return None,
                };
                Some(Destination::Channel {
                    to,
                    topic: message.topic.clone().unwrap_or_default(),
                })
            }
            MessageType::Private => {
                let ids: Vec<i64> = message.recipients.iter().filter_map(|r| r.id).collect();
                let to = if !ids.is_empty() && ids.len() == message.recipients.len() {
                    serde_json::to_string(&ids).ok()?
                } else if !message.recipients.is_empty() {
                    let emails: Vec<&str> = message
                        .recipients
                        .iter()
                        .filter_map(|r| r.email.as_deref())
                        .collect();
                    serde_json::to_string(&emails).ok()?
                } else {
                    serde_json::to_string(&[message.sender_id?]).ok()?
                };
                Some(Destination::Direct { to })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZulipApiError {
    /// The request failed; the text comes from [`crate::redact::http_error`] (no URL).
    #[error("request to Zulip failed: {0}")]
    Http(String),
    #[error("Zulip answered {status}: {message}")]
    Rejected { status: u16, message: String },
}

#[derive(Deserialize)]
struct SendResponse {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    msg: Option<String>,
}

/// An HTTP client for Zulip's REST API.
#[derive(Clone)]
pub struct ZulipClient {
    http: reqwest::Client,
}

impl ZulipClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = crate::outbound::client(Duration::from_secs(20))?;
        Ok(Self { http })
    }

    /// With a client built by [`crate::outbound::client`] (for a timeout of the caller's).
    pub fn with_client(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// Posts `content` as the bot; returns the new message's id.
    pub async fn send_message(
        &self,
        api: &BotApi,
        destination: &Destination,
        content: &str,
    ) -> Result<Option<i64>, ZulipApiError> {
        let url = format!("{}/api/v1/messages", api.site);
        let form: Vec<(&str, &str)> = match destination {
            Destination::Channel { to, topic } => vec![
                ("type", "stream"),
                ("to", to),
                ("topic", topic),
                ("content", content),
            ],
            Destination::Direct { to } => {
                vec![("type", "private"), ("to", to), ("content", content)]
            }
        };
        let response = self
            .http
            .post(url)
            .basic_auth(&api.email, Some(api.api_key.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| ZulipApiError::Http(crate::redact::http_error(e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ZulipApiError::Http(crate::redact::http_error(e)))?;
        let parsed: Option<SendResponse> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let message = parsed
                .and_then(|p| p.msg)
                .unwrap_or_else(|| crate::events::text::truncate_chars(&text, 200).0);
            return Err(ZulipApiError::Rejected {
                status: status.as_u16(),
                message,
            });
        }
        Ok(parsed.and_then(|p| p.id))
    }
}
