//! `user_activity_tracker`: per (realm, user), when they were last seen doing anything, how
//! many messages they sent and reactions they added, their last presence status, and when
//! they last started typing. Works on forwarded events (they carry the realm id).

use super::{
    BuildContext, Context, Effect, Effects, Handler, HandlerResult, Interest, NoSettings,
    SettingsError,
};
use crate::db::tables::user_activity::ActivityDelta;
use crate::events::{Event, EventKind};

pub struct UserActivityTracker;

impl UserActivityTracker {
    /// What an event says about its user; `None` when it says nothing.
    fn delta(event: &Event, realm_id: i64, user_id: i64, at_ms: i64) -> Option<ActivityDelta> {
        let mut delta = ActivityDelta {
            realm_id,
            user_id,
            seen_at_ms: at_ms,
            messages: 0,
            reactions: 0,
            presence: None,
            presence_at_ms: None,
            typing_at_ms: None,
        };
        match &event.kind {
            EventKind::Message(_) => delta.messages = 1,
            EventKind::Reaction(r) if r.op.as_deref() == Some("add") => delta.reactions = 1,
            EventKind::Reaction(_) | EventKind::UpdateMessage(_) | EventKind::UserStatus(_) => {}
            EventKind::Presence(p) => {
                if let Some(status) = p.status() {
                    delta.presence = Some(status.to_string());
                    delta.presence_at_ms = Some(at_ms);
                }
            }
            EventKind::Typing(t) if t.op.as_deref() == Some("start") => {
                delta.typing_at_ms = Some(at_ms);
            }
            EventKind::Typing(_) => {}
            // Other events name a user they are about without that user acting.
            _ => return None,
        }
        Some(delta)
    }
}

impl Handler for UserActivityTracker {
    const NAME: &'static str = "user_activity_tracker";
    const INTEREST: Interest = Interest::Types(&[
        "message",
        "update_message",
        "reaction",
        "presence",
        "typing",
        "user_status",
    ]);
    const PURE: bool = true;

    type Settings = NoSettings;

    fn build(_: NoSettings, _: &BuildContext<'_>) -> Result<Self, SettingsError> {
        Ok(UserActivityTracker)
    }

    async fn handle(&self, _cx: &Context, event: &Event, effects: &mut Effects) -> HandlerResult {
        let (Some(realm_id), Some(user_id)) = (event.realm.id, event.user_id) else {
            return Ok(None);
        };
        let at_ms = event.occurred_at_ms.unwrap_or_else(crate::clock::now_ms);
        if let Some(delta) = Self::delta(event, realm_id, user_id, at_ms) {
            effects.push(Effect::Activity(delta));
        }
        Ok(None)
    }
}
