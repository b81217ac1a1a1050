//! The small part of Zulip's REST API this program calls: `POST /api/v1/messages`, to deliver
//! a bot's reply that was ready only after the HTTP answer had gone back to Zulip, and to post
//! alerts and greetings as a bot; and for `zulip-listeners verify`, the user and message
//! look-ups and the deletion of its test messages.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::{BotConfig, Secret};
use crate::events::{Message, MessageType};
use crate::outbound::ANSWER_LIMIT;

/// Most bytes of a message listing read (`GET /api/v1/messages`: up to 20 messages of up to
/// 10,000 characters each, with their metadata); every other answer is read up to
/// [`ANSWER_LIMIT`].
const LISTING_LIMIT: usize = 1 << 20;

/// A bot's REST credentials (Zulip authenticates any user this way, so `verify` uses them for
/// the person it posts as).
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
    /// A 2xx answer without the fields Zulip's API documents.
    #[error("Zulip's answer was not understood: {0}")]
    Unexpected(String),
}

/// A user as `GET /api/v1/users/me` and `GET /api/v1/users/{email}` describe them.
#[derive(Debug, Clone, Deserialize)]
pub struct ZulipUser {
    pub user_id: i64,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub full_name: String,
    #[serde(default)]
    pub is_bot: bool,
    /// 1 generic, 2 incoming webhook, [`OUTGOING_WEBHOOK_BOT`], 4 embedded; `None` for people.
    #[serde(default)]
    pub bot_type: Option<i64>,
    #[serde(default = "active")]
    pub is_active: bool,
}

/// `bot_type` of an outgoing-webhook bot.
pub const OUTGOING_WEBHOOK_BOT: i64 = 3;

fn active() -> bool {
    true
}

/// A message as `GET /api/v1/messages` lists it (the fields read here; `content` is the
/// Markdown source, as asked for with `apply_markdown=false`).
#[derive(Debug, Clone, Deserialize)]
pub struct ListedMessage {
    pub id: i64,
    pub sender_id: i64,
    #[serde(default)]
    pub sender_email: String,
    #[serde(default)]
    pub content: String,
}

#[derive(Deserialize)]
struct UserResponse {
    user: ZulipUser,
}

#[derive(Deserialize)]
struct MessagesResponse {
    messages: Vec<ListedMessage>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    msg: Option<String>,
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
        let text = answer_text(response, ANSWER_LIMIT).await?;
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

    /// `GET /api/v1/users/me`: whose key `api` holds.
    pub async fn me(&self, api: &BotApi) -> Result<ZulipUser, ZulipApiError> {
        let url = endpoint(api, &["users", "me"])?;
        self.call(self.http.get(url), api, ANSWER_LIMIT).await
    }

    /// `GET /api/v1/users/{email}`: a user (or bot) of the realm by email.
    pub async fn user(&self, api: &BotApi, email: &str) -> Result<ZulipUser, ZulipApiError> {
        let url = endpoint(api, &["users", email])?;
        let found: UserResponse = self.call(self.http.get(url), api, ANSWER_LIMIT).await?;
        Ok(found.user)
    }

    /// `GET /api/v1/messages`: up to `count` messages after message `anchor` (not included)
    /// in `narrow` (Zulip's list of `{"operator", "operand"}` terms), oldest first.
    pub async fn messages_after(
        &self,
        api: &BotApi,
        anchor: i64,
        narrow: &serde_json::Value,
        count: u32,
    ) -> Result<Vec<ListedMessage>, ZulipApiError> {
        let url = endpoint(api, &["messages"])?;
        let query = [
            ("anchor", anchor.to_string()),
            ("include_anchor", "false".into()),
            ("num_before", "0".into()),
            ("num_after", count.to_string()),
            ("apply_markdown", "false".into()),
            ("narrow", narrow.to_string()),
        ];
        let listed: MessagesResponse = self
            .call(self.http.get(url).query(&query), api, LISTING_LIMIT)
            .await?;
        Ok(listed.messages)
    }

    /// `DELETE /api/v1/messages/{id}` (Zulip allows it to administrators, and to senders
    /// when the organisation lets them delete their own messages).
    pub async fn delete_message(&self, api: &BotApi, id: i64) -> Result<(), ZulipApiError> {
        let url = endpoint(api, &["messages", &id.to_string()])?;
        let _: serde_json::Value = self.call(self.http.delete(url), api, ANSWER_LIMIT).await?;
        Ok(())
    }

    /// Sends an API request with `api`'s credentials; a 2xx answer (of at most `limit` bytes)
    /// is read as `T`, any other as the error Zulip gives in `msg`.
    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        api: &BotApi,
        limit: usize,
    ) -> Result<T, ZulipApiError> {
        let response = request
            .basic_auth(&api.email, Some(api.api_key.expose()))
            .send()
            .await
            .map_err(|e| ZulipApiError::Http(crate::redact::http_error(e)))?;
        let status = response.status();
        let text = answer_text(response, limit).await?;
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorResponse>(&text)
                .ok()
                .and_then(|e| e.msg)
                .unwrap_or_else(|| crate::events::text::truncate_chars(&text, 200).0);
            return Err(ZulipApiError::Rejected {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_str(&text).map_err(|e| ZulipApiError::Unexpected(e.to_string()))
    }
}

/// An answer's body as text, read up to `limit` bytes ([`crate::outbound::read_answer`]).
async fn answer_text(response: reqwest::Response, limit: usize) -> Result<String, ZulipApiError> {
    let body = crate::outbound::read_answer(response, limit)
        .await
        .map_err(ZulipApiError::Http)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `{site}/api/v1/` followed by `segments`, each percent-encoded as one path segment.
fn endpoint(api: &BotApi, segments: &[&str]) -> Result<reqwest::Url, ZulipApiError> {
    let mut url = reqwest::Url::parse(&api.site)
        .map_err(|e| ZulipApiError::Http(format!("the site is not a URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| ZulipApiError::Http("the site is not an http(s) URL".into()))?
        .pop_if_empty()
        .extend(["api", "v1"])
        .extend(segments);
    Ok(url)
}
