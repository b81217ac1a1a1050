//! The waiting of `verify`: after the mention is sent, Zulip's conversation (for the bot's
//! reply, or Zulip's "Failure!" in its place), this server's event log (`GET /admin/events`
//! by message) and its inbox (`GET /admin/inbox` by message) are polled together until each
//! is decided or the time is up.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Plan;
use crate::cli::doctor::Check;
use crate::clock::now_ms;
use crate::config::{Config, Secret};
use crate::zulip_api::{BotApi, ZulipClient};

/// Pause between two rounds of look-ups of this server.
const POLL: Duration = Duration::from_millis(50);
/// Pauses between two look-ups of the conversation in Zulip: short at first, so that a quick
/// reply's latency is measured closely, then [`ZULIP_POLL_MAX`], which keeps well under
/// Zulip's default API rate limit of 200 requests a minute per user.
const ZULIP_POLL_FIRST: Duration = Duration::from_millis(50);
const ZULIP_POLL_MAX: Duration = Duration::from_millis(500);
/// How much longer the server's side is watched once Zulip has posted a "Failure!": a
/// webhook answered with an error leaves nothing in the event log.
const AFTER_FAILURE: Duration = Duration::from_secs(3);
/// How far back the event log is searched, for a server whose clock is behind this one.
const CLOCK_MARGIN_MS: i64 = 600_000;
/// Messages of the bot listed after the mention.
const BOT_MESSAGES: u32 = 20;
/// Most bytes of an admin API answer read (a page of the event log or of the inbox).
const ADMIN_ANSWER_LIMIT: usize = 1 << 20;

/// This server's admin API.
pub(super) struct Admin {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

/// Why the admin API gave no answer to use.
#[derive(Debug, Clone)]
pub(super) enum AdminError {
    Unreachable(String),
    /// 401: the token is not the server's.
    Unauthorized,
    /// 404 from a server without an admin token.
    Off,
    /// 404 for the route: a server older than `verify`.
    NoRoute(String),
    Other(u16, String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Unreachable(e) => write!(f, "unreachable: {e}"),
            AdminError::Unauthorized => write!(f, "401, the admin token was refused"),
            AdminError::Off => write!(f, "404, the admin API is off on that server"),
            AdminError::NoRoute(m) => write!(f, "404: {m}"),
            AdminError::Other(status, m) => write!(f, "{status}: {m}"),
        }
    }
}

impl Admin {
    /// The admin API of the server `config` describes (at `url` when given), with its
    /// `[admin] token` (which the caller has checked is set).
    pub(super) fn new(
        config: &Config,
        url: Option<&str>,
        timeout: Duration,
    ) -> Result<Admin, Check> {
        let base = url.map_or_else(|| crate::cli::sample::local_base(config), str::to_string);
        let base = crate::outbound::check_url(&base).map_err(|problem| {
            Check::fail(
                format!("--admin-url {problem}"),
                "give this server's base URL, e.g. http://127.0.0.1:8080",
            )
        })?;
        let http = crate::outbound::client(timeout).map_err(|e| {
            Check::fail(
                format!("cannot build the HTTP client: {e}"),
                "the system's TLS roots or resources are missing; retry",
            )
        })?;
        Ok(Admin {
            http,
            base: base.as_str().trim_end_matches('/').to_string(),
            // `admin.token`, else the first of `[admin.tokens]`.
            token: config
                .admin
                .named_tokens()
                .into_iter()
                .next()
                .map(|(_, token)| token)
                .unwrap_or_default(),
        })
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, AdminError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| AdminError::Unreachable(crate::redact::http_error(e)))?;
        let status = response.status().as_u16();
        let text = crate::outbound::read_answer(response, ADMIN_ANSWER_LIMIT)
            .await
            .map_err(AdminError::Unreachable)?;
        let text = String::from_utf8_lossy(&text);
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| {
                AdminError::Other(status, format!("not the admin API's answer ({e})"))
            });
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| crate::events::text::truncate_chars(&text, 200).0);
        Err(match status {
            401 => AdminError::Unauthorized,
            404 if message.contains("admin API is off") => AdminError::Off,
            404 => AdminError::NoRoute(message),
            _ => AdminError::Other(status, message),
        })
    }
}

/// The admin API's base URL as shown in a checklist line.
pub(super) fn shown(plan: &Plan) -> String {
    plan.admin
        .as_ref()
        .map(|a| a.base.clone())
        .unwrap_or_default()
}

/// The listener runs the event log holds for the mention.
pub(super) struct Webhook {
    /// When the first run started (this server's clock, Unix ms).
    pub at_ms: i64,
    pub runs: usize,
    pub listeners: Vec<String>,
    /// The first failed run: `listener: error`.
    pub failure: Option<String>,
}

/// What was seen by the end of the watch.
pub(super) struct Seen {
    pub mention: i64,
    pub webhook: Option<Webhook>,
    /// The bot's reply and when it was first seen (Unix ms).
    pub reply: Option<(String, i64)>,
    /// Zulip's "Failure! …" posted as the bot instead of a reply.
    pub failure: Option<String>,
    /// The last error listing the conversation.
    pub list_error: Option<String>,
    /// The forwarded `message` event: its status and when it was received (Unix ms).
    pub forwarded: Option<(String, i64)>,
    pub admin_error: Option<AdminError>,
}

#[derive(Deserialize)]
struct EventPage {
    events: Vec<LogRow>,
}

#[derive(Deserialize)]
struct LogRow {
    /// `None` from a server older than the name (it sends only `handler`).
    listener: Option<String>,
    /// The deprecated name of `listener`.
    handler: Option<String>,
    success: bool,
    error: Option<String>,
    duration_us: i64,
    created_at_ms: i64,
}

impl LogRow {
    fn listener(&self) -> &str {
        self.listener
            .as_deref()
            .or(self.handler.as_deref())
            .unwrap_or("unknown")
    }
}

#[derive(Deserialize)]
struct InboxPage {
    events: Vec<InboxRow>,
}

#[derive(Deserialize)]
struct InboxRow {
    event_type: String,
    status: String,
    received_at_ms: i64,
}

/// The watch over one mention.
pub(super) struct Watch<'a> {
    pub zulip: &'a ZulipClient,
    pub user: &'a BotApi,
    pub admin: Option<&'a Admin>,
    /// The conversation, narrowed to the bot's messages.
    pub narrow: &'a serde_json::Value,
    pub mention: i64,
    pub bot_id: i64,
    pub since_ms: i64,
    pub forwarder: bool,
}

impl Watch<'_> {
    /// Polls until the reply, the webhook and (when watched) the forwarded event are each
    /// decided, or `timeout` passes.
    pub(super) async fn run(&self, timeout: Duration) -> Seen {
        let mut seen = Seen {
            mention: self.mention,
            webhook: None,
            reply: None,
            failure: None,
            list_error: None,
            forwarded: None,
            admin_error: None,
        };
        let mut deadline = Instant::now() + timeout;
        let mut zulip_pause = ZULIP_POLL_FIRST;
        let mut zulip_next = Instant::now();
        loop {
            if seen.reply.is_none() && seen.failure.is_none() && Instant::now() >= zulip_next {
                self.look_for_reply(&mut seen).await;
                if seen.failure.is_some() {
                    deadline = deadline.min(Instant::now() + AFTER_FAILURE);
                }
                zulip_next = Instant::now() + zulip_pause;
                zulip_pause = (zulip_pause * 2).min(ZULIP_POLL_MAX);
            }
            if let Some(admin) = self.admin {
                if seen.webhook.is_none() && seen.admin_error.is_none() {
                    match self.webhook(admin).await {
                        Ok(found) => seen.webhook = found,
                        Err(error) => seen.admin_error = Some(error),
                    }
                }
                if self.forwarder && seen.forwarded.is_none() && seen.admin_error.is_none() {
                    match self.forwarded(admin).await {
                        Ok(found) => seen.forwarded = found,
                        Err(error) => seen.admin_error = Some(error),
                    }
                }
            }
            let server_done = self.admin.is_none() || seen.admin_error.is_some();
            let decided = (seen.reply.is_some() || seen.failure.is_some())
                && (server_done || seen.webhook.is_some())
                && (server_done || !self.forwarder || seen.forwarded.is_some());
            if decided || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn look_for_reply(&self, seen: &mut Seen) {
        match self.list().await {
            Ok(messages) => {
                seen.list_error = None;
                if let Some(first) = messages.into_iter().find(|m| m.sender_id == self.bot_id) {
                    let text = first.content.trim().to_string();
                    if text.starts_with("Failure!") {
                        seen.failure = Some(text);
                    } else {
                        seen.reply = Some((text, now_ms()));
                    }
                }
            }
            Err(error) => seen.list_error = Some(error.to_string()),
        }
    }

    async fn list(
        &self,
    ) -> Result<Vec<crate::zulip_api::ListedMessage>, crate::zulip_api::ZulipApiError> {
        self.zulip
            .messages_after(self.user, self.mention, self.narrow, BOT_MESSAGES)
            .await
    }

    /// The ids of the bot's messages after the mention (to delete them).
    pub(super) async fn bot_messages(&self) -> Vec<i64> {
        self.list()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.sender_id == self.bot_id)
            .map(|m| m.id)
            .collect()
    }

    async fn webhook(&self, admin: &Admin) -> Result<Option<Webhook>, AdminError> {
        let page: EventPage = admin
            .get(
                "/admin/events",
                &[
                    ("source", "outgoing".into()),
                    ("message_id", self.mention.to_string()),
                    ("since_ms", (self.since_ms - CLOCK_MARGIN_MS).to_string()),
                    ("per_page", "100".into()),
                ],
            )
            .await?;
        let Some(at_ms) = page
            .events
            .iter()
            .map(|r| r.created_at_ms - r.duration_us / 1000)
            .min()
        else {
            return Ok(None);
        };
        let mut listeners: Vec<String> = page
            .events
            .iter()
            .map(|r| r.listener().to_string())
            .collect();
        listeners.sort();
        listeners.dedup();
        let failure = page.events.iter().find(|r| !r.success).map(|r| {
            format!(
                "{}: {}",
                r.listener(),
                r.error.as_deref().unwrap_or("no error recorded")
            )
        });
        Ok(Some(Webhook {
            at_ms,
            runs: page.events.len(),
            listeners,
            failure,
        }))
    }

    async fn forwarded(&self, admin: &Admin) -> Result<Option<(String, i64)>, AdminError> {
        let page: InboxPage = admin
            .get("/admin/inbox", &[("message_id", self.mention.to_string())])
            .await?;
        Ok(page
            .events
            .into_iter()
            .find(|e| e.event_type == "message")
            .map(|e| (e.status, e.received_at_ms)))
    }
}
