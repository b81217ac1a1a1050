//! `message_logger`: stores every message it sees (id, realm, channel and topic or DM
//! participants, sender, content cut to `data_protection.max_content_length`, timestamp).

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Context, Handler, HandlerResult, Interest, SettingsError, only_keys};
use crate::config::HandlerSettings;
use crate::db::models::NewMessage;
use crate::db::now_ms;
use crate::db::writer::WriteOp;
use crate::events::{Event, Message, truncate_chars};

pub struct MessageLogger;

impl MessageLogger {
    pub const NAME: &'static str = "message_logger";

    pub fn from_settings(settings: &HandlerSettings) -> Result<Self, SettingsError> {
        only_keys(Self::NAME, settings, &[])?;
        Ok(MessageLogger)
    }

    fn row(cx: &Context, event: &Event, message: &Message, id: i64) -> NewMessage {
        let (content, content_truncated) =
            truncate_chars(&message.content, cx.data_protection.max_content_length);
        let dm_recipients = (!message.recipients.is_empty())
            .then(|| serde_json::to_string(&message.recipients).ok())
            .flatten();
        NewMessage {
            message_id: id,
            realm: event.realm.string_id.clone().unwrap_or_default(),
            realm_id: event.realm.id,
            message_type: message.message_type.as_str().to_string(),
            stream_id: message.stream_id,
            channel: message.channel.clone(),
            topic: message.topic.clone(),
            dm_recipients,
            sender_id: message.sender_id,
            sender_email: message.sender_email.clone(),
            sender_name: message.sender_full_name.clone(),
            content,
            content_truncated,
            sent_at: message.timestamp,
            source: event.origin.source(),
            deleted: false,
            edited_at: None,
            stored_at_ms: now_ms(),
        }
    }
}

impl Handler for MessageLogger {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn interest(&self) -> Interest {
        Interest::Types(&["message"])
    }

    fn handle<'a>(&'a self, cx: &'a Context, event: &'a Event) -> BoxFuture<'a, HandlerResult> {
        async move {
            let Some(message) = event.message() else {
                return Ok(None);
            };
            let Some(id) = message.id else {
                tracing::debug!("message without an id (minimal or Slack-format body); not stored");
                return Ok(None);
            };
            cx.store(WriteOp::Message(Self::row(cx, event, message, id)))
                .await;
            Ok(None)
        }
        .boxed()
    }
}
