//! `message_logger`: stores every message it sees (id, realm, channel and topic or DM
//! participants, sender, content cut to `data_protection.max_content_length`, timestamp) and,
//! for forwarded events, keeps the stored copy true on edits, topic and channel moves, and
//! deletions. A message read from an envelope whose content was removed is never stored as
//! text: one deleted meanwhile is stored as a deleted tombstone, one erased by retention not
//! at all.

use super::{
    BuildContext, Context, Effect, Effects, Handler, HandlerResult, Interest, NoSettings,
    SettingsError,
};
use crate::clock::now_ms;
use crate::db::tables::messages::{MessageEdit, MessageRow};
use crate::events::erasure::Removal;
use crate::events::kinds::UpdateMessage;
use crate::events::text::truncate_chars;
use crate::events::{Event, EventKind, Message};

pub struct MessageLogger;

impl MessageLogger {
    fn row(cx: &Context, event: &Event, message: &Message, id: i64) -> MessageRow {
        let (content, content_truncated) =
            truncate_chars(&message.content, cx.data_protection.max_content_length);
        let dm_recipients = (!message.recipients.is_empty())
            .then(|| serde_json::to_string(&message.recipients).ok())
            .flatten();
        MessageRow {
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
            source: event.origin.source().into(),
            deleted: false,
            edited_at: None,
            stored_at_ms: now_ms(),
        }
    }

    fn edit(cx: &Context, update: &UpdateMessage) -> Option<MessageEdit> {
        // Zulip's own re-rendering (link previews) changes nothing a person wrote.
        if update.rendering_only == Some(true) {
            return None;
        }
        let content = update
            .content
            .as_deref()
            .map(|c| truncate_chars(c, cx.data_protection.max_content_length));
        let topic = update.subject.clone();
        let stream_id = update.new_stream_id;
        if content.is_none() && topic.is_none() && stream_id.is_none() {
            return None;
        }
        Some(MessageEdit {
            message_id: update.message_id,
            message_ids: update.message_ids.clone(),
            content,
            topic,
            stream_id,
            edited_at: update.edit_timestamp,
        })
    }
}

impl Handler for MessageLogger {
    const NAME: &'static str = "message_logger";
    const INTEREST: Interest = Interest::Types(&["message", "update_message", "delete_message"]);
    const PURE: bool = true;

    type Settings = NoSettings;

    fn build(_: NoSettings, _: &BuildContext<'_>) -> Result<Self, SettingsError> {
        Ok(MessageLogger)
    }

    async fn handle(&self, cx: &Context, event: &Event, effects: &mut Effects) -> HandlerResult {
        match &event.kind {
            EventKind::Message(message) => match (message.id, message.content_removed) {
                (Some(id), None) => effects.push(Effect::StoreMessage(Box::new(Self::row(
                    cx, event, message, id,
                )))),
                (Some(id), Some(Removal::Deleted)) => {
                    // Deleted after it was received: kept as a tombstone (a re-sent copy is
                    // then not stored), and any copy stored meanwhile erased.
                    let mut row = Self::row(cx, event, message, id);
                    row.deleted = true;
                    row.topic = None;
                    row.dm_recipients = None;
                    effects.push(Effect::StoreMessage(Box::new(row)));
                    effects.push(Effect::DeleteMessages(vec![id]));
                }
                (Some(_), Some(Removal::Retention)) => {
                    tracing::debug!("message content removed by retention; not stored")
                }
                (None, _) => {
                    tracing::debug!("message without an id (minimal or Slack body); not stored")
                }
            },
            EventKind::UpdateMessage(update) => {
                if let Some(edit) = Self::edit(cx, update) {
                    effects.push(Effect::EditMessage(Box::new(edit)));
                }
            }
            EventKind::DeleteMessage(delete) => {
                let ids = delete.ids();
                if !ids.is_empty() {
                    effects.push(Effect::DeleteMessages(ids));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}
